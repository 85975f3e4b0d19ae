"""FailoverBackend's logic on fake backends: Triton first, in-process when it is down, and back."""

import threading
import time

import numpy as np
import pytest

from serving.backends.triton import TIMEOUT_EXPIRED, FailoverBackend, TritonBackend, TritonTimeoutError


class FakeTriton:
    name, url = "triton", "127.0.0.1:0"

    def __init__(self, ready: bool = True):
        self.is_ready, self.fail, self.runs, self.reconnects, self.closed = ready, False, 0, 0, False
        self.checked = threading.Event()

    def ready(self) -> bool:
        self.checked.set()
        return self.is_ready

    def reconnect(self) -> None:
        self.reconnects += 1

    def run(self, variant, feeds, timeout_ms=None):
        self.timeout_ms = timeout_ms
        if self.fail:
            raise ConnectionError("Triton is gone")
        if timeout_ms is not None and timeout_ms <= 0:
            raise TritonTimeoutError(f"{variant}: dropped ({TIMEOUT_EXPIRED})", retry_after_s=1.0)
        self.runs += 1
        return np.ones(1), 1.0, self.name

    def close(self) -> None:
        self.closed = True


class FakeLocal:
    name, device = "onnxruntime", "cpu"

    def __init__(self):
        self.started, self.runs, self.closed = False, 0, False

    def start(self) -> None:
        self.started = True

    def run(self, variant, feeds):
        self.runs += 1
        return np.zeros(1), 2.0, self.name

    def healthy(self) -> bool:
        return self.started and not self.closed

    def close(self) -> None:
        self.closed = True


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def backends():
    triton, local = FakeTriton(), FakeLocal()
    failover = FailoverBackend(triton, local, health_interval_s=0.01)
    failover.start()
    yield triton, local, failover
    failover.close()


def test_triton_serves_while_it_is_up(backends):
    triton, local, failover = backends
    assert failover.run("v", {})[2] == "triton" and failover.name == "triton"
    assert triton.runs == 1 and local.runs == 0 and local.started  # the fallback is loaded, ready to take over


def test_a_failed_request_is_served_in_process_at_once_and_triton_is_marked_down(backends):
    triton, _, failover = backends
    triton.fail, triton.is_ready = True, False
    output, _, served_by = failover.run("v", {})
    assert served_by == "onnxruntime" and output.tolist() == [0.0]  # the client sees no error
    assert failover.name == "onnxruntime"
    assert failover.run("v", {})[2] == "onnxruntime" and triton.runs == 0  # not tried again while down


def test_traffic_returns_when_the_health_check_sees_triton_ready_again(backends):
    triton, _, failover = backends
    triton.fail, triton.is_ready = True, False
    failover.run("v", {})
    wait_for(lambda: triton.reconnects > 0)  # fresh connections while it is down
    triton.fail, triton.is_ready = False, True
    wait_for(lambda: failover.name == "triton")
    assert failover.run("v", {})[2] == "triton"


def test_a_triton_not_ready_at_start_is_not_used_until_it_is():
    triton, local = FakeTriton(ready=False), FakeLocal()
    failover = FailoverBackend(triton, local, health_interval_s=0.01)
    failover.start()
    try:
        assert failover.run("v", {})[2] == "onnxruntime" and failover.healthy()
        triton.is_ready = True
        wait_for(lambda: failover.name == "triton")
    finally:
        failover.close()
    assert triton.closed and local.closed and not failover.healthy()


def test_a_request_triton_dropped_at_its_deadline_is_refused_and_triton_stays_up(backends):
    triton, local, failover = backends
    assert failover.run("v", {}, timeout_ms=5.0)[2] == "triton" and triton.timeout_ms == 5.0
    with pytest.raises(TritonTimeoutError, match=TIMEOUT_EXPIRED) as refused:
        failover.run("v", {}, timeout_ms=0.0)
    assert refused.value.retry_after_s > 0  # an OverloadError: HTTP 503 + Retry-After at the edge
    assert failover.name == "triton" and local.runs == 0  # not a failure of Triton's, not run in-process
    assert failover.run("v", {})[2] == "triton" and triton.timeout_ms is None


class FakeClient:
    """tritonclient's InferenceServerClient.infer, as far as TritonBackend.run uses it."""

    def __init__(self, error: str | None = None):
        self.error, self.kwargs = error, None

    def infer(self, model, inputs, **kwargs):
        from tritonclient.utils import InferenceServerException

        self.kwargs = kwargs
        if self.error:
            raise InferenceServerException(self.error, status="StatusCode.UNAVAILABLE")
        return self

    def as_numpy(self, name):
        return np.zeros((2, 1), np.float32)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_time_left_goes_to_triton_as_its_timeout_in_microseconds(protocol):
    from contract.manifest import TensorSpec

    backend = TritonBackend("127.0.0.1:1", {"v": [TensorSpec("RATING", "float32", (-1,))]}, protocol=protocol)
    backend._connect()  # the tritonclient module for the protocol; no connection is made
    client = backend._shared = FakeClient()
    feeds = {"X": np.zeros((2, 3), np.float32)}
    (rating,), _, _ = backend.run("v", feeds, timeout_ms=12.5)
    assert client.kwargs["timeout"] == 12_500 and rating.shape == (2,)
    backend.run("v", feeds, timeout_ms=-3.0)  # already over: the least timeout, never 0 (which means none)
    assert client.kwargs["timeout"] == 1
    backend.run("v", feeds)
    assert "timeout" not in client.kwargs
    backend._shared = FakeClient(TIMEOUT_EXPIRED)
    with pytest.raises(TritonTimeoutError, match="ran out"):
        backend.run("v", feeds, timeout_ms=1.0)
    backend._shared = FakeClient("connection refused")
    with pytest.raises(Exception, match="connection refused") as other:
        backend.run("v", feeds, timeout_ms=1.0)
    assert not isinstance(other.value, TritonTimeoutError)  # any other error still fails over
