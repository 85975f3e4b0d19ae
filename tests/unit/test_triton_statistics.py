"""The shared-queue estimate from Triton's statistics: parsing, the folding arithmetic on known
deltas, resets, staleness, and the poller's thread (on fake statistics: no server)."""

from __future__ import annotations

import threading
import time

import pytest

from serving.policy import NO_EXTERNAL_LOAD, Executor, ExternalLoad
from serving.triton.statistics import (
    STALE_S,
    Counters,
    ModelLoad,
    OwnTraffic,
    StatisticsPoller,
    decayed,
    parse_statistics,
)


def grpc_json(name: str, success: int, queue_ns: int, compute_ns: tuple[int, int, int], rows: int | None = None):
    """One model's statistics as tritonclient's gRPC `as_json=True` gives them: 64-bit integers as
    strings, zero-valued fields left out."""
    count = str(success) if success else None
    stats = {
        "success": {"count": count, "ns": str(queue_ns + sum(compute_ns))},
        "fail": {},
        "queue": {"count": count, "ns": str(queue_ns)},
        "compute_input": {"count": count, "ns": str(compute_ns[0])},
        "compute_infer": {"count": count, "ns": str(compute_ns[1])},
        "compute_output": {"count": count, "ns": str(compute_ns[2])},
    }
    model = {"name": name, "version": "1", "inference_stats": stats}
    if success:
        model |= {"inference_count": str(rows if rows is not None else success), "execution_count": str(success)}
    return model


def response(*models) -> dict:
    return {"model_stats": list(models)}


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- parsing -------------------------------------------------------------------------------------


def test_grpc_json_and_http_statistics_parse_alike_and_versions_add_up():
    grpc = parse_statistics(response(grpc_json("a", 10, 5_000_000, (1, 20_000_000, 2), rows=30)))
    http = parse_statistics(
        {
            "model_stats": [
                {
                    "name": "a",
                    "version": "1",
                    "inference_count": 30,
                    "execution_count": 10,
                    "inference_stats": {
                        "success": {"count": 10, "ns": 25_000_003},
                        "queue": {"count": 10, "ns": 5_000_000},
                        "compute_input": {"count": 10, "ns": 1},
                        "compute_infer": {"count": 10, "ns": 20_000_000},
                        "compute_output": {"count": 10, "ns": 2},
                    },
                }
            ]
        }
    )
    expected = Counters(10, 30, 10, 10, 5_000_000, 10, 20_000_003)
    assert grpc == http == {"a": expected}
    # A model never run: gRPC's JSON has no counts at all. Two versions of one model: summed.
    idle = parse_statistics(response(grpc_json("b", 0, 0, (0, 0, 0))))
    assert idle == {"b": Counters()}
    two = parse_statistics(
        response(grpc_json("a", 10, 5_000_000, (1, 20_000_000, 2), rows=30), grpc_json("a", 1, 0, (0, 0, 0)))
    )
    assert two["a"].success == 11 and two["a"].inferences == 31
    assert parse_statistics({}) == {}


# -- the arithmetic --------------------------------------------------------------------------------


BEFORE = Counters(
    success=100, inferences=300, executions=50, queue_count=100, queue_ns=10**9, compute_count=100, compute_ns=10**9
)
# 0.5 s later: 200 more requests (600 rows), 400 ms more queueing (2 ms each), 800 ms more compute (4 ms each).
AFTER = Counters(
    success=300,
    inferences=900,
    executions=150,
    queue_count=300,
    queue_ns=14 * 10**8,
    compute_count=300,
    compute_ns=18 * 10**8,
)


def test_two_snapshots_give_the_rate_the_mean_queue_and_compute_and_littles_law():
    load = ModelLoad.between(BEFORE, AFTER, 0.5)
    assert load.rate_per_s == pytest.approx(400.0)
    assert load.rows_per_s == pytest.approx(1200.0)
    assert load.queue_ms == pytest.approx(2.0) and load.compute_ms == pytest.approx(4.0)
    assert load.in_system == pytest.approx(400.0 * 6.0 / 1000)  # 2.4 requests at Triton on average


def test_the_other_clients_load_is_littles_law_less_this_processs_own():
    load = ModelLoad.between(BEFORE, AFTER, 0.5)
    # This process spent 300 ms in round trips to the model over those 0.5 s: 0.6 requests on average.
    others = load.external(own_ms=300.0, seconds=0.5)
    assert others.in_flight == pytest.approx(1.8) and others.work_ms == pytest.approx(1.8 * 4.0)
    half = load.external(own_ms=300.0, seconds=0.5, share=0.5)
    assert half.in_flight == pytest.approx(0.9) and half.work_ms == pytest.approx(3.6)
    # Round trips include the network: when this process is the only client, own >= Triton's view.
    assert load.external(own_ms=1500.0, seconds=0.5) is NO_EXTERNAL_LOAD


def test_no_traffic_in_an_interval_is_no_load():
    load = ModelLoad.between(AFTER, AFTER, 0.5)
    assert load.rate_per_s == load.queue_ms == load.compute_ms == load.in_system == 0.0
    assert load.external(0.0, 0.5) is NO_EXTERNAL_LOAD


def test_counters_that_went_down_or_no_time_give_no_estimate():
    assert ModelLoad.between(AFTER, BEFORE, 0.5) is None  # the model reloaded, or the server restarted
    restarted = Counters(success=5, queue_count=5, queue_ns=10, compute_count=5, compute_ns=10)
    assert ModelLoad.between(AFTER, restarted, 0.5) is None
    assert ModelLoad.between(BEFORE, AFTER, 0.0) is None


def test_a_stale_estimate_halves_every_half_life_and_is_gone_after_stale_s():
    load = ExternalLoad(4.0, 16.0)
    assert decayed(load, 0.0) is load
    assert decayed(load, 1.0, half_life_s=1.0) == pytest.approx(ExternalLoad(2.0, 8.0))
    assert decayed(load, 2.0, half_life_s=1.0) == pytest.approx(ExternalLoad(1.0, 4.0))
    assert decayed(load, STALE_S) is NO_EXTERNAL_LOAD


# -- the poller's folding, driven by hand ----------------------------------------------------------


def snapshot(success: int, queue_ms_each: float = 2.0, compute_ms_each: float = 4.0, name: str = "v") -> dict:
    """Cumulative statistics after `success` requests that each queued and computed that long."""
    return grpc_json(name, success, int(success * queue_ms_each * 1e6), (0, int(success * compute_ms_each * 1e6), 0))


def make_poller(targets, clock=None, own=None, **kwargs):
    return StatisticsPoller(lambda: {}, targets, own or OwnTraffic(), clock=clock or FakeClock(), **kwargs)


def test_the_poller_sets_the_other_clients_load_on_the_executor_and_subtracts_its_own():
    executor, own, clock = Executor(parallelism=2), OwnTraffic(), FakeClock()
    poller = make_poller({"v": executor}, clock, own)
    poller.update(response(snapshot(100)))  # a baseline: nothing to say yet
    assert executor.external is NO_EXTERNAL_LOAD and poller.loads == {}
    clock.now += 0.5
    for _ in range(50):  # this process: 50 of the 200 requests, 6 ms of round trip each (300 ms)
        own.record("v", 6.0)
    poller.update(response(snapshot(300)))
    # 400/s x 6 ms = 2.4 at Triton, 0.6 of them this process's: 1.8 others', 4 ms of compute each.
    assert executor.external.in_flight == pytest.approx(1.8)
    assert executor.external.work_ms == pytest.approx(7.2)
    assert poller.loads["v"].rate_per_s == pytest.approx(400.0)
    clock.now += 0.5
    poller.update(response(snapshot(300)))  # a quiet interval: nobody is queueing any more
    assert executor.external is NO_EXTERNAL_LOAD


def test_models_on_one_executor_add_up_and_untargeted_models_do_not_count():
    shared, alone = Executor(parallelism=1), Executor(parallelism=1)
    clock = FakeClock()
    poller = make_poller({"a": shared, "b": shared, "c": alone, "d": None}, clock)
    models = ("a", "b", "c", "d", "a_router")
    poller.update(response(*(snapshot(0, name=m) for m in models)))
    clock.now += 1.0
    poller.update(response(*(snapshot(100, name=m) for m in models)))  # 100/s x 6 ms: 0.6 each
    assert shared.external.in_flight == pytest.approx(1.2) and shared.external.work_ms == pytest.approx(4.8)
    assert alone.external.in_flight == pytest.approx(0.6)
    assert set(poller.loads) == {"a", "b", "c", "d"}  # watched; the router's calls are on its variants


def test_a_failing_poll_decays_the_estimate_to_zero_and_the_next_good_one_is_only_a_baseline():
    executor, clock = Executor(parallelism=1), FakeClock()
    poller = make_poller({"v": executor}, clock)
    poller.update(response(snapshot(0)))
    clock.now += 0.5
    poller.update(response(snapshot(200)))
    fresh = executor.external
    assert fresh.in_flight == pytest.approx(2.4)
    clock.now += 1.0
    poller.update(None)  # the server is down: one half-life later, half of it
    assert executor.external.in_flight == pytest.approx(1.2) and executor.external.work_ms == pytest.approx(4.8)
    clock.now += 1.0
    poller.update(response(snapshot(5000)))  # back (or still restarting): a new baseline, no estimate across the gap
    assert executor.external.in_flight == pytest.approx(0.6)
    clock.now += STALE_S
    poller.update(None)
    assert executor.external is NO_EXTERNAL_LOAD and poller.failures == 2
    clock.now += 0.5
    poller.update(response(snapshot(5100)))  # after a failure, again a baseline first
    assert executor.external is NO_EXTERNAL_LOAD
    clock.now += 0.5
    poller.update(response(snapshot(5200)))  # estimating again
    assert executor.external.in_flight == pytest.approx(200 * 6.0 / 1000)


def test_counters_that_went_down_keep_the_last_estimate_decaying_then_start_again():
    executor, clock = Executor(parallelism=1), FakeClock()
    poller = make_poller({"v": executor}, clock)
    poller.update(response(snapshot(1000)))
    clock.now += 0.5
    poller.update(response(snapshot(1200)))
    assert executor.external.in_flight == pytest.approx(2.4)
    clock.now += 1.0
    poller.update(response(snapshot(10)))  # the model was reloaded: its counters start over
    assert executor.external.in_flight == pytest.approx(1.2)
    clock.now += 0.5
    poller.update(response(snapshot(110)))
    assert executor.external.in_flight == pytest.approx(1.2)  # 200/s x 6 ms, fresh
    clock.now += 0.5
    poller.update(response())  # the model is gone from the server: nothing queues on it
    assert executor.external is NO_EXTERNAL_LOAD


def test_stopping_takes_back_only_the_load_this_poller_set():
    executor, clock = Executor(parallelism=1), FakeClock()
    poller = make_poller({"v": executor}, clock)
    poller.update(response(snapshot(0)))
    clock.now += 0.5
    poller.update(response(snapshot(200)))
    assert executor.external is not NO_EXTERNAL_LOAD
    poller.stop()
    assert executor.external is NO_EXTERNAL_LOAD
    newer = make_poller({"v": executor}, clock)  # e.g. the next repository version's backend
    newer.update(response(snapshot(200)))
    clock.now += 0.5
    newer.update(response(snapshot(400)))
    theirs = executor.external
    poller.stop()
    assert executor.external is theirs


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="interval_s"):
        make_poller({}, interval_s=0)
    with pytest.raises(ValueError, match="share"):
        make_poller({}, share=-1.0)


# -- the thread ------------------------------------------------------------------------------------


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_the_thread_polls_off_the_request_path_and_a_dead_server_decays_to_zero():
    executor, clock = Executor(parallelism=1), FakeClock()
    served = {"n": 0, "fail": False}
    released = threading.Event()
    stopped = threading.Event()

    def fetch():
        if served["fail"]:
            released.wait(5.0)  # a hung call: requests must not notice
            raise ConnectionError("Triton is gone")
        served["n"] += 100
        clock.now += 0.5
        return response(snapshot(served["n"]))

    poller = StatisticsPoller(fetch, {"v": executor}, OwnTraffic(), interval_s=0.01, clock=clock, on_stop=stopped.set)
    poller.start()
    try:
        wait_for(lambda: executor.external.in_flight > 0)
        assert executor.external.in_flight == pytest.approx(1.2)  # 200/s x 6 ms
        served["fail"] = True
        # While the poll hangs the estimate is readable at once (no lock, no wait on the poller).
        start = time.perf_counter()
        assert executor.external.in_flight > 0
        assert time.perf_counter() - start < 0.01
        clock.now += STALE_S
        released.set()
        wait_for(lambda: executor.external is NO_EXTERNAL_LOAD)
        assert poller.failures >= 1
    finally:
        released.set()
        poller.stop()
    assert stopped.is_set() and executor.external is NO_EXTERNAL_LOAD


def test_a_malformed_answer_does_not_end_the_thread():
    executor, clock = Executor(parallelism=1), FakeClock()
    answers = iter([{"model_stats": [{"no name": 1}]}, response(snapshot(0))])

    def fetch():
        clock.now += 0.5
        return next(answers, None) or response(snapshot(int(clock.now * 10)))

    poller = StatisticsPoller(fetch, {"v": executor}, OwnTraffic(), interval_s=0.01, clock=clock).start()
    try:
        wait_for(lambda: executor.external.in_flight > 0)
    finally:
        poller.stop()


# -- the backend -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_triton_backend_polls_an_unreachable_server_without_harm(protocol):
    from serving.backends.triton import STATS_INTERVAL_S, TritonBackend
    from serving.process import free_port

    assert STATS_INTERVAL_S == 0.5
    executor = Executor(parallelism=1)
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    backend = TritonBackend(url, {"v": []}, protocol=protocol, executor=executor, stats_interval_s=0.01)
    backend.start()
    try:
        wait_for(lambda: backend.statistics.failures >= 2)
        assert executor.external is NO_EXTERNAL_LOAD
    finally:
        start = time.perf_counter()
        backend.close()
        assert time.perf_counter() - start < 3.0
    off = TritonBackend(url, {"v": []}, protocol=protocol, executor=executor, stats_interval_s=0)
    off.start()
    assert off.statistics is None and off._own is None
    off.close()
    with pytest.raises(ValueError, match="stats_interval_s"):
        TritonBackend(url, {"v": []}, protocol=protocol, stats_interval_s=-1)
