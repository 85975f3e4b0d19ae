"""The queue other clients build at a shared Triton server, read from its statistics and folded into
the routing policy's queueing predictions.

Several gateway processes (BentoML workers) may send to one Triton server. Each process's policy
counts only its own requests in flight (`Executor.in_flight`), so the work the other processes queue
at Triton is invisible to it. A `StatisticsPoller` (one daemon thread per `TritonBackend`, never on a
request's path) reads the v2 statistics extension (`get_inference_statistics`: every model's
cumulative counters, in one call) every `interval_s` and, per model, over the last interval:

    rate        = Δsuccess.count / Δt                                    requests/s
    queue_ms    = Δqueue.ns / Δqueue.count                               mean wait in Triton's queue
    compute_ms  = Δ(compute_input + compute_infer + compute_output).ns / Δcompute_infer.count
    in_system   = rate x (queue_ms + compute_ms)                         Little's law: requests at Triton
    own         = Σ this process's round trips to the model (ms) / Δt    Little's law on this side
    external    = max(0, in_system - own) x share                        the other clients' requests
    work_ms     = external x compute_ms                                  the service they carry

summed over the models that run on an executor and set as its `ExternalLoad`, which the policy
counts in `queue_delay` like the executor's own work in flight. Only the models named as targets
(the variants this process sends to) count: a router model's own calls to its variants show up on
the variants, and counting the router too would count them twice.

`own` is measured over the same interval as `in_system` (rather than read from the executor's
instantaneous in-flight count), and from round trips, which include the network: when this process
is Triton's only client, `external` is zero or nearly so. A round trip that ends just after a poll
is in Triton's counters for one interval and in `own` for the next, so that one interval errs high
and the next low (clamped at zero); on busy cores such a reading can show for one poll. Triton's
queue and compute counters cover successful requests only; so does `own`.

`share`: how much of the other clients' load competes for this executor's slots. 1.0 takes the
executor's `parallelism` as the server's whole capacity (the safe side); with W processes each
given a 1/W share of the cores the server runs on, 1/W models the server's whole capacity instead
(the same `queue_delay` as the totals over W x parallelism slots).

Stale statistics never linger: a poll that fails (server down, a timeout: every call has one), or a
model whose counters went down (reloaded, server restarted), leaves the last estimate to halve every
`half_life_s` and vanish after `STALE_S`; the next good poll only sets a new baseline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from serving.policy import NO_EXTERNAL_LOAD, Executor, ExternalLoad

log = logging.getLogger("flexserve.triton")

STATS_INTERVAL_S = 0.5  # how often a Triton backend reads the server's statistics; 0: never
STATS_SHARE = 1.0  # the share of the other clients' load that competes for this process's executor
STATS_TIMEOUT_S = 1.0  # one statistics call's deadline
STALE_HALF_LIFE_S = 1.0  # an estimate no poll renews halves this often...
STALE_S = 5.0  # ...and is dropped once this old
MIN_INTERVAL_S = 1e-3  # shorter intervals between two snapshots give no estimate


@dataclass(frozen=True, slots=True)
class Counters:
    """One model's cumulative statistics (all its versions summed), as Triton reports them."""

    success: int = 0  # successful requests
    inferences: int = 0  # inference_count: rows (a request of batch n counts n)
    executions: int = 0  # execution_count: model runs (a dynamic batch counts once)
    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0  # compute_infer.count
    compute_ns: int = 0  # compute_input + compute_infer + compute_output

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(_values(self), _values(other), strict=True)))


_FIELDS = tuple(f.name for f in fields(Counters))


def _values(counters: Counters) -> tuple[int, ...]:
    return tuple(getattr(counters, name) for name in _FIELDS)


def _int(value: object) -> int:
    """A uint64 as gRPC's JSON (a string) or HTTP's (a number) writes it; absent (zero) is 0."""
    return int(value or 0)


def _duration(stats: Mapping, name: str) -> tuple[int, int]:
    entry = stats.get(name) or {}
    return _int(entry.get("count")), _int(entry.get("ns"))


def parse_statistics(response: Mapping) -> dict[str, Counters]:
    """`get_inference_statistics` (gRPC with `as_json=True`, or HTTP) -> model name -> counters.
    gRPC's JSON leaves out fields that are zero and writes 64-bit integers as strings."""
    out: dict[str, Counters] = {}
    for model in response.get("model_stats") or ():
        stats = model.get("inference_stats") or {}
        queue_count, queue_ns = _duration(stats, "queue")
        compute_count, infer_ns = _duration(stats, "compute_infer")
        counters = Counters(
            success=_duration(stats, "success")[0],
            inferences=_int(model.get("inference_count")),
            executions=_int(model.get("execution_count")),
            queue_count=queue_count,
            queue_ns=queue_ns,
            compute_count=compute_count,
            compute_ns=_duration(stats, "compute_input")[1] + infer_ns + _duration(stats, "compute_output")[1],
        )
        name = model["name"]
        out[name] = out[name] + counters if name in out else counters
    return out


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """One model's traffic at Triton over one interval (all its clients)."""

    rate_per_s: float  # requests
    rows_per_s: float
    queue_ms: float  # mean per request
    compute_ms: float  # mean per request
    in_system: float  # Little's law: the mean number of requests queued or running at Triton

    @classmethod
    def between(cls, before: Counters, after: Counters, seconds: float) -> ModelLoad | None:
        """The load between two snapshots `seconds` apart; None when there is nothing to go on:
        a counter went down (the model was reloaded or the server restarted) or no time passed."""
        deltas = [b - a for a, b in zip(_values(before), _values(after), strict=True)]
        if seconds < MIN_INTERVAL_S or min(deltas) < 0:
            return None
        d = Counters(*deltas)
        rate = d.success / seconds
        queue_ms = d.queue_ns / d.queue_count / 1e6 if d.queue_count else 0.0
        compute_ms = d.compute_ns / d.compute_count / 1e6 if d.compute_count else 0.0
        return cls(rate, d.inferences / seconds, queue_ms, compute_ms, rate * (queue_ms + compute_ms) / 1e3)

    def external(self, own_ms: float, seconds: float, share: float = STATS_SHARE) -> ExternalLoad:
        """The other clients' part: `in_system` less this process's own (`own_ms`: its round trips
        to the model over the same `seconds`), never below zero, each carrying `compute_ms`."""
        others = max(0.0, self.in_system - own_ms / 1e3 / seconds) * share
        return ExternalLoad(others, others * self.compute_ms) if others > 0 else NO_EXTERNAL_LOAD


def decayed(load: ExternalLoad, age_s: float, half_life_s: float = STALE_HALF_LIFE_S) -> ExternalLoad:
    """An estimate `age_s` old: halved every `half_life_s`, gone at `STALE_S`."""
    if age_s <= 0 or load is NO_EXTERNAL_LOAD:
        return load
    if age_s >= STALE_S:
        return NO_EXTERNAL_LOAD
    factor = 2.0 ** (-age_s / half_life_s)
    return ExternalLoad(load.in_flight * factor, load.work_ms * factor)


def total(loads: list[ExternalLoad]) -> ExternalLoad:
    if not loads:
        return NO_EXTERNAL_LOAD
    in_flight, work_ms = sum(x.in_flight for x in loads), sum(x.work_ms for x in loads)
    return ExternalLoad(in_flight, work_ms) if in_flight > 0 else NO_EXTERNAL_LOAD


class OwnTraffic:
    """This process's successful round trips to one Triton server, per model: cumulative busy time (ms)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._busy_ms: dict[str, float] = {}

    def record(self, model: str, elapsed_ms: float) -> None:
        with self._lock:  # microseconds: on the request's path, after its answer came back
            self._busy_ms[model] = self._busy_ms.get(model, 0.0) + elapsed_ms

    def busy_ms(self) -> dict[str, float]:
        with self._lock:
            return dict(self._busy_ms)


_OWN: dict[str, OwnTraffic] = {}
_OWN_LOCK = threading.Lock()


def own_traffic(url: str) -> OwnTraffic:
    """The one `OwnTraffic` of this process towards `url`: shared by every backend that sends there
    (the old and the new repository version during a reload), so none counts another as external."""
    with _OWN_LOCK:
        return _OWN.setdefault(url, OwnTraffic())


@dataclass(slots=True)
class _Model:
    """What the poller remembers of one model."""

    counters: Counters
    own_ms: float
    estimate: ExternalLoad = NO_EXTERNAL_LOAD
    estimated_at: float = 0.0
    load: ModelLoad | None = None


class StatisticsPoller:
    """Reads `fetch()` (a statistics response, see `parse_statistics`) every `interval_s` on a daemon
    thread and sets each target executor's `ExternalLoad` (see the module docstring). `targets`:
    model name -> the executor its requests run on (None: watched, folded nowhere). `update` is the
    whole computation, on an explicit clock; the thread only calls it."""

    def __init__(
        self,
        fetch: Callable[[], Mapping],
        targets: Mapping[str, Executor | None],
        own: OwnTraffic,
        *,
        interval_s: float = STATS_INTERVAL_S,
        share: float = STATS_SHARE,
        half_life_s: float = STALE_HALF_LIFE_S,
        clock: Callable[[], float] = time.monotonic,
        on_stop: Callable[[], None] | None = None,
        name: str = "flexserve-triton-statistics",
    ):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if not share >= 0 or half_life_s <= 0:
            raise ValueError(f"share must be >= 0 and half_life_s > 0, got {share} and {half_life_s}")
        self.fetch, self.targets, self.own = fetch, dict(targets), own
        self.interval_s, self.share, self.half_life_s, self.clock = interval_s, share, half_life_s, clock
        self.polls = self.failures = 0
        self._models: dict[str, _Model] = {}
        self._baseline_at: float | None = None  # when the counters in `_models` were read
        self._written: dict[int, ExternalLoad] = {}  # id(executor) -> what this poller set there last
        self._on_stop = on_stop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- what it knows -----------------------------------------------------------------------
    @property
    def loads(self) -> dict[str, ModelLoad]:
        """Each target model's load over the last interval with an estimate (all its clients)."""
        return {name: m.load for name, m in list(self._models.items()) if m.load is not None}

    def external(self, model: str) -> ExternalLoad:
        """The other clients' load last estimated on `model` (not decayed)."""
        m = self._models.get(model)
        return m.estimate if m is not None else NO_EXTERNAL_LOAD

    # -- the computation -------------------------------------------------------------------
    def update(self, response: Mapping | None, now: float | None = None) -> None:
        """Fold one poll's `response` (None: the poll failed) into the targets' `ExternalLoad`."""
        now = self.clock() if now is None else now
        if response is None:
            self.failures += 1
            self._baseline_at = None  # the next good poll only sets a baseline: no estimate across a gap
        else:
            self.polls += 1
            self._fold(parse_statistics(response), now)
        self._write(now)

    def _fold(self, counters: Mapping[str, Counters], now: float) -> None:
        own = self.own.busy_ms()
        seconds = None if self._baseline_at is None else now - self._baseline_at
        models: dict[str, _Model] = {}
        for name in self.targets:
            current = counters.get(name)
            if current is None:
                continue  # not loaded there (or not yet): nothing queues on it
            own_ms = own.get(name, 0.0)
            previous = self._models.get(name)
            model = models[name] = _Model(current, own_ms)
            if previous is None:
                continue  # a baseline
            load = None if seconds is None else ModelLoad.between(previous.counters, current, seconds)
            if load is None:  # after a gap, or counters reset: no new estimate, the last one decays on
                model.estimate, model.estimated_at = previous.estimate, previous.estimated_at
                continue
            model.load = load
            model.estimate = load.external(max(0.0, own_ms - previous.own_ms), seconds, self.share)
            model.estimated_at = now
        self._models, self._baseline_at = models, now

    def _write(self, now: float) -> None:
        per_executor: dict[int, list[ExternalLoad]] = {}
        for name, executor in self.targets.items():
            if executor is None:
                continue
            model = self._models.get(name)
            load = NO_EXTERNAL_LOAD if model is None else decayed(model.estimate, now - model.estimated_at)
            per_executor.setdefault(id(executor), []).append(load)
        for executor in self._executors():
            load = total(per_executor[id(executor)])
            executor.external = self._written[id(executor)] = load

    def _executors(self) -> list[Executor]:
        return list({id(e): e for e in self.targets.values() if e is not None}.values())

    # -- the thread -------------------------------------------------------------------------
    def start(self) -> StatisticsPoller:
        self._thread.start()
        return self

    def _run(self) -> None:
        failing = False
        try:
            while not self._stop.is_set():  # the first poll at once: a baseline
                try:
                    response = self.fetch()
                except Exception as error:  # down, slow, restarting: the estimate decays, nothing raises
                    if not failing:
                        log.info("Triton statistics unavailable (%s): the shared queue estimate decays", error)
                    response = None
                failing = response is None
                try:
                    self.update(response)
                except Exception:  # a malformed answer must not end the thread
                    log.exception("Triton statistics: could not fold a response")
                    self._baseline_at = None
                self._stop.wait(self.interval_s)
        finally:
            if self._on_stop is not None:
                try:
                    self._on_stop()  # on this thread: e.g. close a client that must stay on it
                except Exception:
                    pass

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop polling, and take back the load this poller set (unless another has set a newer one)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)
        for executor in self._executors():
            if executor.external is self._written.get(id(executor)):
                executor.external = NO_EXTERNAL_LOAD
