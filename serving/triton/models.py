"""The Python-backend models Triton runs (each `<model>/1/model.py` is one import of these).

- `VariantModel`: one variant in ONNX Runtime (the portable flavour, for the Triton server in
  the nvidia-pytriton wheel, which has no native ONNX Runtime backend). It checks the ONNX
  file against the manifest's sha256 before loading it, and runs a dynamic batch of requests
  as one ONNX Runtime call. Its first run is logged with its time (Triton's log, INFO): with the
  config's `model_warmup` sample that run happens while the model loads, before it is ready.
- `RouterModel`: one per family (`<family>_router`). Per request it decodes the inputs with the
  family's adapter (the same as the gateway's: the model's own inputs, or raw ones such as `TEXT`
  or `USER_ID` + `ITEM_IDS`), asks the routing policy (the same code as the gateway) for a variant
  within the request's latency budget, calls that variant model with BLS, and returns its outputs,
  the variant's name (`VARIANT`) and whether the policy predicted it to meet the budget
  (`PREDICTED_TO_MEET`; the client measures the truth). A variant that fails (an error, or
  NaN out) is left out and the request routed again; once another variant answers, the failed ones
  are benched for the `bench_s` config parameter (the gateway's default), as in the gateway.

Routing fields: the optional input `LATENCY_BUDGET_MS` (FP32, its first value), else the request
parameters `latency_budget_ms`, the family's floor (`min_accuracy`, `max_rmse`, ...), `variant` and
`strict` (the Open Inference Protocol's `parameters`, as the gateway's v2 endpoint takes them).
Client errors become `TritonError(INVALID_ARG)`: gRPC INVALID_ARGUMENT, HTTP 400.

Deadlines: the router passes the time left to the variant as the BLS request's `timeout`
(microseconds), so the variant's queue (its config's `default_queue_policy`) drops the call once it
can no longer make it. The deadline is a strict request's budget, or the client's own Triton
`timeout` on the router request, whichever ends first, counted from when the router took the
request; a request that is neither is best effort (served late rather than never, as on the
gateway) and waits at most the queue's default. A call Triton dropped ("Request timeout expired")
is neither a variant failure nor routed again: the client gets `TritonError(UNAVAILABLE)` (gRPC
UNAVAILABLE, HTTP 503) saying so, as it does for a strict request the policy refuses.

Metrics: each routing decision is counted on Triton's /metrics (the metrics port) as
`flexserve_router_decisions_total{family, variant, predicted_to_meet, outcome}`, outcome one of
`budget_met` / `budget_missed` (the router's own time from taking the request to the variant's
answer, against the budget; the client's view adds the network), `failed` (the variant failed and
the request was routed again) or `timed_out` (Triton dropped the call at its deadline); and the
latest prediction per variant as the gauge `flexserve_router_predicted_latency_ms{family, variant}`,
set at most once a second per variant. Each metric update is a round trip from the backend stub to
the server (~0.03 ms here), hence one counter update per decision and the throttled gauge.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from contract.triton_config import TIMEOUT_EXPIRED
from serving.errors import FlexServeError, InferenceFailedError, InvalidRequestError, OverloadError

DECISIONS_METRIC = "flexserve_router_decisions_total"
PREDICTED_METRIC = "flexserve_router_predicted_latency_ms"


def _pb():
    import triton_python_backend_utils as pb_utils  # exists only inside Triton's Python backend stub

    return pb_utils


def _parameters(config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _error(message: str, code: str = "INVALID_ARG"):
    """An error response; `code` a `TritonError` code: INVALID_ARG (gRPC INVALID_ARGUMENT, HTTP 400),
    UNAVAILABLE (gRPC UNAVAILABLE, HTTP 503), INTERNAL."""
    pb = _pb()
    return pb.InferenceResponse(error=pb.TritonError(message, getattr(pb.TritonError, code)))


class DeadlineExpired(Exception):
    """Triton dropped a BLS call from the variant's queue: the request's deadline had passed."""


class RouterMetrics:
    """The router's decisions as Triton custom metrics (python_backend's `pb_utils.MetricFamily`), on
    the server's /metrics. One `Metric` per label set, made once and kept: making one costs a round
    trip to the server too. Never fails a request: if the server refuses metrics (started with
    `--allow-metrics=false`, or a Python backend without the API), they are left out, logged once."""

    def __init__(self, pb, family: str, gauge_interval_s: float = 1.0):
        self.pb, self.family, self.gauge_interval_s = pb, family, gauge_interval_s
        self._counters: dict[tuple, object] = {}
        self._gauges: dict[str, object] = {}
        self._gauge_set_at: dict[str, float] = {}
        self.enabled = True
        try:
            kind = pb.MetricFamily
            self._decisions = kind(
                name=DECISIONS_METRIC,
                description="FlexServe router decisions by family, chosen variant, prediction and outcome",
                kind=kind.COUNTER,
            )
            self._predicted = kind(
                name=PREDICTED_METRIC,
                description="FlexServe router: latest predicted latency (ms) of the chosen variant",
                kind=kind.GAUGE,
            )
        except Exception as error:
            self._disable(error)

    def _disable(self, error: Exception) -> None:
        if self.enabled:
            self.enabled = False
            self.pb.Logger.log_warn(f"{self.family}_router: custom metrics left out ({type(error).__name__}: {error})")

    def decided(self, decision, outcome: str) -> None:
        """Count one decision: `outcome` budget_met, budget_missed, failed or timed_out."""
        if not self.enabled:
            return
        try:
            key = (decision.variant, decision.predicted_to_meet, outcome)
            counter = self._counters.get(key)
            if counter is None:
                labels = {
                    "family": self.family,
                    "variant": decision.variant,
                    "predicted_to_meet": "true" if decision.predicted_to_meet else "false",
                    "outcome": outcome,
                }
                counter = self._counters[key] = self._decisions.Metric(labels=labels)
            counter.increment(1)
            now = time.monotonic()
            if now - self._gauge_set_at.get(decision.variant, -math.inf) >= self.gauge_interval_s:
                gauge = self._gauges.get(decision.variant)
                if gauge is None:
                    labels = {"family": self.family, "variant": decision.variant}
                    gauge = self._gauges[decision.variant] = self._predicted.Metric(labels=labels)
                gauge.set(float(decision.predicted_ms))
                self._gauge_set_at[decision.variant] = now
        except Exception as error:
            self._disable(error)

    def close(self) -> None:
        """Metrics before their families (Triton warns otherwise)."""
        self._counters.clear()
        self._gauges.clear()
        self._decisions = self._predicted = None


class VariantModel:
    def initialize(self, args: dict) -> None:
        from contract.files import sha256_file
        from contract.sessions import open_session

        config = json.loads(args["model_config"])
        params = _parameters(config)
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"  # linked in by the writer
        actual = sha256_file(path)
        if actual != params["sha256"]:
            raise RuntimeError(
                f"{path} has sha256 {actual[:12]}..., the manifest says {params['sha256'][:12]}...: "
                "refusing to serve it; rebuild the Triton repository with `flexserve triton repo`"
            )
        self.session = open_session(path, int(params.get("threads", "1")))
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        # Per-row scalars travel as [n, 1]; the model takes and gives [n].
        self.scalar_rows = set(filter(None, params.get("scalar_rows", "").split(",")))
        # A dynamic axis that may be padded to batch requests together (the text family's tokens).
        self.padded = dict(item.split("=") for item in filter(None, params.get("pad", "").split(",")))
        self.name, self.ran = args["model_name"], False

    def _feed(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        if name in self.scalar_rows:
            return np.concatenate([a.reshape(-1) for a in arrays])
        if len({a.shape[1:] for a in arrays}) > 1:
            if name not in self.padded:
                raise ValueError(f"requests with different {name} shapes cannot share a batch")
            width = max(a.shape[1] for a in arrays)
            pad = int(self.padded[name])
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad) for a in arrays]
        return np.concatenate(arrays)

    def execute(self, requests: list) -> list:
        pb = _pb()
        try:
            columns = {
                name: [pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs
            }
            sizes = [len(a) for a in columns[self.inputs[0]]]
            started = time.perf_counter()
            outputs = self.session.run(None, {name: self._feed(name, arrays) for name, arrays in columns.items()})
        except Exception as error:
            if len(requests) == 1:
                return [_error(f"{type(error).__name__}: {error}")]
            return self._one_by_one(requests)
        if not self.ran:  # the warmup sample's run, when the config has one
            self.ran = True
            took_ms = (time.perf_counter() - started) * 1e3
            pb.Logger.log_info(f"{self.name}: first run, {sum(sizes)} row(s) in {took_ms:.1f} ms")
        outputs = [o[:, None] if name in self.scalar_rows else o for name, o in zip(self.outputs, outputs, strict=True)]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb.Tensor(name, o[start : start + size]) for name, o in zip(self.outputs, outputs, strict=True)]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def _one_by_one(self, requests: list) -> list:
        """A batch failed: run each request alone, so only the bad one gets the error."""
        return [self.execute([request])[0] for request in requests]

    def finalize(self) -> None:
        self.session = None


class RouterModel:
    def initialize(self, args: dict) -> None:
        from serving.families import family_adapter
        from serving.policy import DEFAULT_BENCH_S, DEFAULT_LATENCY_BUDGET_MS, policy_from_manifest
        from serving.repository import load_repository

        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.family = params["family"]
        self.default_budget_ms = float(params.get("default_budget_ms", DEFAULT_LATENCY_BUDGET_MS))
        self.bench_s = float(params.get("bench_s", DEFAULT_BENCH_S))
        repo = load_repository(params["flexserve_repo"])  # verifies every file's sha256
        section = repo.family(self.family)
        self.adapter = family_adapter(self.family, section, lambda name: repo.artifact(self.family, name))
        # Each variant model is its own Triton model with one instance: its own queue.
        self.policy = policy_from_manifest(
            self.family, section, executor_of=lambda name: name, executors={v.name: 1 for v in section.variants}
        )
        self.input_names = [s.name for s in section.inputs] + [t.name for t in self.adapter.raw_inputs]
        self.outputs = [s.name for s in section.outputs]
        self.metrics = RouterMetrics(_pb(), self.family)

    def _routing(self, request) -> dict:
        """The routing fields: the LATENCY_BUDGET_MS tensor, else the request's parameters."""
        pb = _pb()
        parameters = json.loads(request.parameters() or "{}")
        tensor = pb.get_input_tensor_by_name(request, "LATENCY_BUDGET_MS")
        if tensor is not None:
            values = tensor.as_numpy().reshape(-1)
            if values.size == 0:
                raise InvalidRequestError("LATENCY_BUDGET_MS", "is empty", "one FP32 value in milliseconds")
            budget, field = float(values[0]), "LATENCY_BUDGET_MS"
        else:
            field = "latency_budget_ms"
            budget = parameters.get("latency_budget_ms", self.default_budget_ms)
            if isinstance(budget, str):  # tritonclient's gRPC parameters may arrive as strings
                try:
                    budget = float(budget)
                except ValueError:
                    raise InvalidRequestError(
                        "latency_budget_ms", f"{budget!r} is not a number", "milliseconds, e.g. 20"
                    ) from None
        return {
            "budget_field": field,
            "latency_budget_ms": budget,
            "min_quality": self.adapter.floor(parameters),
            "variant": parameters.get("variant"),
            "strict": parameters.get("strict", False),
        }

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _deadline(self, request, started: float, budget_ms: float, strict: bool) -> tuple[float, str, str] | None:
        """(when a variant call must have started, in `time.perf_counter()` seconds, what set it, what
        to ask for instead): a strict request's budget, or the client's own `timeout` (microseconds) on
        this request, whichever ends first; None for a best-effort request."""
        ends = []
        if strict:
            ends.append((started + budget_ms / 1e3, f"its strict {budget_ms:g} ms budget", "a looser budget"))
        timeout_us = request.timeout()
        if timeout_us:
            ends.append((started + timeout_us / 1e6, f"its timeout of {timeout_us} us", "a longer timeout"))
        return min(ends, default=None)

    def _one(self, request):
        pb = _pb()
        started = time.perf_counter()
        deadline = None
        try:
            named = {}
            for name in self.input_names:
                tensor = pb.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    named[name] = tensor.as_numpy()
            decoded = self.adapter.decode_tensors(named)
            routing = self._routing(request)
            budget, budget_field = routing.pop("latency_budget_ms"), routing.pop("budget_field")
            failed: dict[str, str] = {}
            while True:
                try:
                    decision = self.policy.route(budget, decoded.rows, **routing, exclude=list(failed))
                except InvalidRequestError as error:
                    if failed and error.field == self.policy.floor_field:  # all that meet the floor failed
                        raise self._every_variant_failed(failed) from None
                    if error.field == "latency_budget_ms":  # named as the client sent it
                        raise InvalidRequestError(budget_field, error.problem, error.accepted) from None
                    raise
                if not failed:  # the budget and `strict` are checked now
                    deadline = self._deadline(request, started, budget, routing["strict"])
                try:
                    response, elapsed_ms = self._call(
                        pb, decision.variant, decoded.feeds, deadline[0] if deadline else None
                    )
                    problem = response.error().message() if response.has_error() else self._non_finite(pb, response)
                except Exception as error:  # BLS itself raised
                    problem = f"{type(error).__name__}: {error}"
                if problem is None:
                    break
                self.policy.finish(decision, None)
                if TIMEOUT_EXPIRED in problem and deadline is not None:
                    self.metrics.decided(decision, "timed_out")
                    raise DeadlineExpired(
                        f"{self.family}_router: the request ran out of time ({deadline[1]}) before "
                        f"{decision.variant} could start it: Triton dropped it from the variant's queue "
                        f"({TIMEOUT_EXPIRED}); retry later, or send {deadline[2]}"
                    )
                self.metrics.decided(decision, "failed")
                failed[decision.variant] = problem
                routing["variant"] = None
                if len(failed) >= len(self.policy.variant_names):  # the request, likely: no variant is benched
                    raise self._every_variant_failed(failed)
        except InvalidRequestError as error:
            return _error(f"{error.field}: {error.problem}; accepted: {error.accepted}")
        except (OverloadError, DeadlineExpired) as error:  # the load's, not the request's: retry later
            return _error(str(error), "UNAVAILABLE")
        except FlexServeError as error:
            return _error(str(error))
        self.policy.finish(decision, elapsed_ms)
        met = (time.perf_counter() - started) * 1e3 <= budget
        self.metrics.decided(decision, "budget_met" if met else "budget_missed")
        for variant in failed:  # another variant answered: the ones that failed sit out bench_s
            self.policy.bench(variant, self.bench_s)
        arrays = [pb.get_output_tensor_by_name(response, name).as_numpy() for name in self.outputs]
        arrays = self.adapter.finish(arrays, decoded, decision.variant)
        tensors = [pb.Tensor(name, array) for name, array in zip(self.outputs, arrays, strict=True)]
        variant = np.array([decision.variant.encode()], dtype=np.object_)
        predicted = np.array([decision.predicted_to_meet], dtype=bool)  # the client measures the truth
        return pb.InferenceResponse(
            output_tensors=[*tensors, pb.Tensor("VARIANT", variant), pb.Tensor("PREDICTED_TO_MEET", predicted)]
        )

    def _every_variant_failed(self, failed: dict[str, str]) -> InferenceFailedError:
        return InferenceFailedError.of(self.family, failed, "inputs", f"GET /v2/models/{self.family}_router")

    def _call(self, pb, variant: str, feeds: dict[str, np.ndarray], deadline: float | None):
        """BLS: run `variant` on the feeds (per-row scalars as [n, 1], as the variant model takes them),
        with the time left before `deadline` as the call's `timeout` (at least 1 us: 0 means none)."""
        inputs = [pb.Tensor(name, value.reshape(-1, 1) if value.ndim == 1 else value) for name, value in feeds.items()]
        started = time.perf_counter()
        limit = {} if deadline is None else {"timeout": max(1, int((deadline - started) * 1e6))}
        call = pb.InferenceRequest(model_name=variant, requested_output_names=self.outputs, inputs=inputs, **limit)
        response = call.exec()
        return response, (time.perf_counter() - started) * 1e3

    def _non_finite(self, pb, response) -> str | None:
        for name in self.outputs:
            value = pb.get_output_tensor_by_name(response, name).as_numpy()
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return f"its output {name} holds NaN or infinity"
        return None

    def finalize(self) -> None:
        self.metrics.close()
        self.policy = None
