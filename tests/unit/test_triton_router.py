"""The Triton router model's deadlines and metrics on a fake `triton_python_backend_utils`: the time
left goes to the variant as the BLS call's `timeout`, a call Triton dropped for it is a clear
UNAVAILABLE error (not a variant failure), and decisions are counted without ever failing a request."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from serving.families.base import Decoded
from serving.policy import Policy, PolicyConfig, ServiceProfile, VariantProfile
from serving.triton.models import DECISIONS_METRIC, TIMEOUT_EXPIRED, RouterMetrics, RouterModel


class FakeError:
    INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

    def __init__(self, message, code=INTERNAL):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.tensors = {t.name: t for t in output_tensors}
        self._error = error

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error


class FakeTensor:
    def __init__(self, name, value):
        self.name, self.value = name, np.asarray(value)

    def as_numpy(self):
        return self.value


class FakeRequest:
    def __init__(self, tensors, parameters=None, timeout_us=0):
        self.tensors = {name: FakeTensor(name, v) for name, v in tensors.items()}
        self._parameters, self._timeout = json.dumps(parameters or {}), timeout_us

    def parameters(self):
        return self._parameters

    def timeout(self):
        return self._timeout


class FakeMetric:
    def __init__(self, family, labels):
        self.family, self.labels, self.value = family, labels, 0.0

    def increment(self, n):
        self.value += n

    def set(self, value):
        self.value = value


class FakeMetricFamily:
    COUNTER, GAUGE = "counter", "gauge"
    refuse = False

    def __init__(self, name, description, kind):
        if FakeMetricFamily.refuse:
            raise RuntimeError("metrics are disabled")
        self.name, self.kind, self.metrics = name, kind, []
        FAMILIES[name] = self

    def Metric(self, labels):  # python_backend's name
        metric = FakeMetric(self, labels)
        self.metrics.append(metric)
        return metric


FAMILIES: dict[str, FakeMetricFamily] = {}
CALLS: list[dict] = []  # the BLS calls: model and timeout
ANSWER: dict = {}  # model -> what its BLS call answers: "timeout", or outputs


class FakeInferenceRequest:
    def __init__(self, model_name, requested_output_names, inputs, timeout=0):
        self.model_name, self.timeout = model_name, timeout

    def exec(self):
        CALLS.append({"model": self.model_name, "timeout": self.timeout})
        if ANSWER.get(self.model_name) == "timeout":
            return FakeResponse(error=FakeError(TIMEOUT_EXPIRED))
        return FakeResponse([FakeTensor("LOGITS", np.zeros((1, 2), np.float32))])


@pytest.fixture
def pb(monkeypatch):
    module = types.SimpleNamespace(
        TritonError=FakeError,
        InferenceResponse=FakeResponse,
        Tensor=FakeTensor,
        InferenceRequest=FakeInferenceRequest,
        MetricFamily=FakeMetricFamily,
        Logger=types.SimpleNamespace(log_warn=lambda message: None),
        get_input_tensor_by_name=lambda request, name: request.tensors.get(name),
        get_output_tensor_by_name=lambda response, name: response.tensors.get(name),
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    FAMILIES.clear(), CALLS.clear(), ANSWER.clear()
    FakeMetricFamily.refuse = False
    return module


class FakeAdapter:
    raw_inputs = ()

    def decode_tensors(self, named):
        return Decoded({"X": named["X"]}, rows=len(named["X"]))

    def floor(self, parameters):
        return None

    def finish(self, outputs, decoded, variant):
        return outputs


def flat(p95: float) -> ServiceProfile:
    return ServiceProfile((1, 4), (0.8 * p95, 3.2 * p95), (p95, 4 * p95), (1.5 * p95, 6 * p95))


def router(pb) -> RouterModel:
    """A RouterModel as `initialize` leaves it, without a repository: m_full (p95 10 ms), m_small (1 ms)."""
    model = RouterModel()
    model.family, model.default_budget_ms, model.bench_s = "m", 200.0, 5.0
    model.adapter, model.input_names, model.outputs = FakeAdapter(), ["X"], ["LOGITS"]
    variants = [
        VariantProfile("m_full", 0.92, flat(10.0), "m_full"),
        VariantProfile("m_small", 0.90, flat(1.0), "m_small"),
    ]
    model.policy = Policy("m", variants, config=PolicyConfig())
    model.metrics = RouterMetrics(pb, "m")
    return model


def ask(model, budget_ms=50.0, timeout_us=0, **parameters):
    tensors = {"X": np.zeros((1, 3), np.float32), "LATENCY_BUDGET_MS": np.array([budget_ms], np.float32)}
    return model.execute([FakeRequest(tensors, parameters, timeout_us)])[0]


def decisions() -> dict[tuple, float]:
    return {
        (m.labels["variant"], m.labels["predicted_to_meet"], m.labels["outcome"]): m.value
        for m in FAMILIES[DECISIONS_METRIC].metrics
    }


def test_the_time_left_goes_to_the_variant_as_its_timeout_only_with_a_deadline(pb):
    model = router(pb)
    assert not ask(model, 50.0).has_error() and CALLS[-1] == {"model": "m_full", "timeout": 0}  # best effort
    assert not ask(model, 50.0, strict=True).has_error()
    assert 40_000 < CALLS[-1]["timeout"] <= 50_000  # the strict budget's time left, in microseconds
    assert not ask(model, 50.0, timeout_us=20_000).has_error()
    assert 10_000 < CALLS[-1]["timeout"] <= 20_000  # the client's own Triton timeout, when it ends first
    assert not ask(model, 15.0, timeout_us=1_000_000, strict=True).has_error()
    assert 5_000 < CALLS[-1]["timeout"] <= 15_000
    assert decisions() == {("m_full", "true", "budget_met"): 4.0}
    (gauge,) = FAMILIES["flexserve_router_predicted_latency_ms"].metrics  # set at most once a second
    assert gauge.labels == {"family": "m", "variant": "m_full"} and gauge.value > 0


def test_a_call_triton_dropped_at_its_deadline_is_unavailable_not_a_variant_failure(pb):
    model = router(pb)
    ANSWER["m_full"] = "timeout"
    response = ask(model, 50.0, timeout_us=1)
    assert response.has_error() and response.error().code() == FakeError.UNAVAILABLE
    message = response.error().message()
    assert "ran out of time (its timeout of 1 us)" in message and "m_full" in message and TIMEOUT_EXPIRED in message
    assert "a longer timeout" in message
    assert [c["model"] for c in CALLS] == ["m_full"] and CALLS[0]["timeout"] == 1  # not routed again
    assert decisions() == {("m_full", "true", "timed_out"): 1.0}
    assert all(v["in_flight"] == 0 and v["benched_s"] == 0 for v in model.policy.snapshot())  # finished, not benched
    assert "a looser budget" in ask(model, 50.0, strict=True).error().message()
    ANSWER.clear()
    assert not ask(model, 50.0).has_error()  # the router goes on serving


def test_a_variant_error_without_a_deadline_is_still_routed_around(pb):
    model = router(pb)
    ANSWER["m_full"] = "timeout"  # the queue's default (a minute) ran out: a failing variant, as any error
    assert not ask(model, 50.0).has_error()
    assert [c["model"] for c in CALLS] == ["m_full", "m_small"]
    assert decisions() == {("m_full", "true", "failed"): 1.0, ("m_small", "true", "budget_met"): 1.0}


def test_metrics_never_fail_a_request(pb):
    FakeMetricFamily.refuse = True  # e.g. tritonserver --allow-metrics=false
    model = router(pb)
    assert not model.metrics.enabled and not ask(model, 50.0).has_error()
    model.finalize()
