"""FailoverBackend's logic on fake backends: Triton first, in-process when it is down, and back."""

import threading
import time

import numpy as np
import pytest

from serving.backends.triton import FailoverBackend


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

    def run(self, variant, feeds):
        if self.fail:
            raise ConnectionError("Triton is gone")
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
