"""FlexServe's Prometheus metrics, on BentoML's /metrics beside its own.

BentoML runs prometheus_client in multiprocess mode (every worker writes its values to files in
PROMETHEUS_MULTIPROC_DIR, and /metrics merges them), so the metrics are created lazily, once per
process, after BentoML has set that directory. Names as scraped (prometheus_client adds `_total` to
counters and `_bucket`/`_sum`/`_count` to histograms; BentoML adds no prefix):

    flexserve_requests_total{family,variant,outcome}        budget_met, budget_missed, error (a variant
                                                            run); client_error (4xx), overload (503):
                                                            refused, variant "none"
    flexserve_request_latency_seconds{family,variant}       histogram, measured in the gateway
    flexserve_in_flight{family,variant}                     requests running or queued
    flexserve_variant_failures_total{family,variant}        failures that benched a variant
    flexserve_slo_requests_total{family,budget_le_ms,met}   answered requests by budget class, met or not
    flexserve_policy_predicted_latency_ms{family,variant}   the policy's prediction for one row now
    flexserve_policy_slowdown{family,variant}               observed / profiled service time
    flexserve_policy_overhead_ms{family}                    the learned overhead predictions add

docs/grafana/flexserve.json is a dashboard of all of them (README, "Prometheus and Grafana").
"""

from __future__ import annotations

import bisect
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Callable
from typing import NamedTuple

from serving.gateway import Observer

log = logging.getLogger("flexserve.metrics")

# The budget classes of flexserve_slo_requests_total, in ms: a request counts in the first class
# whose bound is >= its latency budget (`budget_le_ms`, like a histogram's `le`), past the last in
# "+Inf". Their one home. The load tests' SLA budgets (20, 50, 200 ms) and the default budget (200 ms)
# are bounds, so each of those classes holds exactly one SLA.
BUDGET_CLASSES_MS = (5, 10, 20, 50, 100, 200, 500, 1000, 5000)
_BUDGET_LABELS = (*(f"{bound:g}" for bound in BUDGET_CLASSES_MS), "+Inf")
_MET = {"budget_met": "true", "budget_missed": "false"}  # the outcomes of an answered request

# How often the policy gauges are read from the gateway (seconds). Not per request: a snapshot takes
# the policy lock and costs tens of microseconds per family, and the gauges change continuously anyway
# (a slowdown decays with a 1 s half-life), so a timer also keeps them true while no traffic comes.
REFRESH_S = 0.5


def budget_class(budget_ms: float) -> str:
    """The `budget_le_ms` label of a request with this latency budget."""
    return _BUDGET_LABELS[bisect.bisect_left(BUDGET_CLASSES_MS, budget_ms)]


class Metrics(NamedTuple):
    requests: object
    latency: object
    in_flight: object
    failures: object
    slo: object
    predicted: object
    slowdown: object
    overhead: object


def make_metrics(registry=None) -> Metrics:
    """FlexServe's metrics, registered in `registry` (default: prometheus_client's global one, which
    BentoML's /metrics reads in multiprocess mode; tests pass a fresh `CollectorRegistry`)."""
    import prometheus_client as prom

    registry = prom.REGISTRY if registry is None else registry
    # The policy gauges: each worker process routes with its own policies, and "livemostrecent" keeps
    # one series per (family, variant) whatever the number of workers: the value last written by a
    # live one (every worker writes every REFRESH_S, so it is never older than that), with no `pid`
    # label to aggregate over and no new series on every restart; a dead worker's values are dropped
    # (BentoML marks it dead). "liveall" would show each worker apart (a `pid` label, a new series per
    # restart); "mostrecent" would keep a dead worker's last values.
    policy_gauge = functools.partial(prom.Gauge, multiprocess_mode="livemostrecent", registry=registry)
    return Metrics(
        requests=prom.Counter(
            "flexserve_requests",
            "Requests by family, variant and outcome (budget_met, budget_missed, client_error, overload, error)",
            ["family", "variant", "outcome"],
            registry=registry,
        ),
        latency=prom.Histogram(
            "flexserve_request_latency_seconds",
            "Latency measured in the gateway",
            ["family", "variant"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=registry,
        ),
        in_flight=prom.Gauge(
            "flexserve_in_flight",
            "Requests running or queued per variant",
            ["family", "variant"],
            multiprocess_mode="livesum",
            registry=registry,
        ),
        failures=prom.Counter(
            "flexserve_variant_failures",
            "Variant runs that raised or answered NaN where another variant then answered (the variant was benched)",
            ["family", "variant"],
            registry=registry,
        ),
        slo=prom.Counter(
            "flexserve_slo_requests",
            "Answered requests by family, latency budget class (budget <= budget_le_ms) and whether the "
            "budget was met (met: true/false); attainment = met / all, per class",
            ["family", "budget_le_ms", "met"],
            registry=registry,
        ),
        predicted=policy_gauge(
            "flexserve_policy_predicted_latency_ms",
            "The routing policy's predicted latency of a one-row request sent now (ms): queueing + "
            "profiled p95 x slowdown + learned overhead, as GET /v1/variants reports it",
            ["family", "variant"],
        ),
        slowdown=policy_gauge(
            "flexserve_policy_slowdown",
            "The routing policy's slowdown factor per variant: observed / profiled service time, smoothed",
            ["family", "variant"],
        ),
        overhead=policy_gauge(
            "flexserve_policy_overhead_ms",
            "The overhead the routing policy adds to every prediction of this family (ms), learned online",
            ["family"],
        ),
    )


@functools.cache
def _metrics() -> Metrics:
    """Created once per process, after BentoML has set up Prometheus' multiprocess directory."""
    return make_metrics()


class PrometheusObserver(Observer):
    def __init__(self, metrics: Metrics | None = None, refresh_s: float = REFRESH_S):
        self.metrics = _metrics() if metrics is None else metrics
        self.requests, self.latency, self.in_flight, self.failures = self.metrics[:4]
        self.refresh_s = refresh_s
        self._stop: threading.Event | None = None
        self.thread: threading.Thread | None = None  # the one refreshing the policy gauges, if any
        self._lock = threading.Lock()
        self._shown: tuple[set, set] = (set(), set())  # the (family, variant)s and families with gauges set
        self._in_flight: dict[tuple, object] = {}
        self._finished: dict[tuple, tuple] = {}

    def started(self, family: str, variant: str) -> None:
        self._running(family, variant).inc()

    def finished(self, family: str, variant: str, outcome: str, latency_s: float, budget_ms: float) -> None:
        key = (family, variant, outcome, budget_class(budget_ms))
        children = self._finished.get(key)
        if children is None:
            children = self._finished[key] = self._children(*key)
        running, requests, latency, slo = children
        running.dec()
        requests.inc()
        latency.observe(latency_s)
        if slo is not None:
            slo.inc()

    def variant_failed(self, family: str, variant: str) -> None:
        self.failures.labels(family=family, variant=variant).inc()

    def rejected(self, family: str, outcome: str) -> None:
        self.requests.labels(family=family, variant="none", outcome=outcome).inc()

    # Per request, the labelled children are looked up once per label set and kept (prometheus_client's
    # `labels()` costs microseconds): the label sets are bounded, the families and variants served.
    def _running(self, family: str, variant: str):
        child = self._in_flight.get((family, variant))
        if child is None:
            child = self._in_flight[family, variant] = self.in_flight.labels(family=family, variant=variant)
        return child

    def _children(self, family: str, variant: str, outcome: str, budget_le_ms: str) -> tuple:
        met = _MET.get(outcome)  # None: not answered (a failed variant run: the request is routed again)
        return (
            self._running(family, variant),
            self.requests.labels(family=family, variant=variant, outcome=outcome),
            self.latency.labels(family=family, variant=variant),
            None if met is None else self.metrics.slo.labels(family=family, budget_le_ms=budget_le_ms, met=met),
        )

    # -- the policy gauges -----------------------------------------------------------------
    def routing_state(self, read: Callable[[], dict] | None) -> None:
        """Set the policy gauges from `read()` (`Gateway.variants`) at once and every `refresh_s`, on a
        daemon thread, until called again (None: the gateway has closed). The thread holds the gateway
        weakly: it ends when the gateway is gone too."""
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        if read is None:
            return
        stop = self._stop = threading.Event()
        ref = weakref.WeakMethod(read) if inspect.ismethod(read) else (lambda: read)
        self.thread = threading.Thread(
            target=self._refresh_until, args=(ref, stop), name="flexserve-metrics", daemon=True
        )
        self.thread.start()

    def _refresh_until(self, ref: Callable[[], Callable[[], dict] | None], stop: threading.Event) -> None:
        logged = False
        while not stop.is_set():
            try:
                if not self._refresh_from(ref):
                    return
            except Exception:  # a metrics bug must not take anything down; said once, not every refresh
                if not logged:
                    log.exception("could not read the routing state for the policy gauges")
                    logged = True
            stop.wait(self.refresh_s)

    def _refresh_from(self, ref: Callable[[], Callable[[], dict] | None]) -> bool:
        read = ref()  # a local: the gateway is held only while it is read
        if read is None:
            return False
        self.refresh(read())
        return True

    def refresh(self, state: dict) -> None:
        """Set the policy gauges from `Gateway.variants()`'s answer (what GET /v1/variants reports);
        the gauges of a variant or family no longer served read NaN (prometheus_client cannot remove
        a series in multiprocess mode)."""
        m = self.metrics
        variants, families = set(), set()
        with self._lock:
            for family, section in state["families"].items():
                m.overhead.labels(family=family).set(section["overhead_ms"])
                families.add(family)
                for variant in section["variants"]:
                    name = variant["name"]
                    m.predicted.labels(family=family, variant=name).set(variant["predicted_ms"])
                    m.slowdown.labels(family=family, variant=name).set(variant["slowdown"])
                    variants.add((family, name))
            for family, name in self._shown[0] - variants:
                m.predicted.labels(family=family, variant=name).set(float("nan"))
                m.slowdown.labels(family=family, variant=name).set(float("nan"))
            for family in self._shown[1] - families:
                m.overhead.labels(family=family).set(float("nan"))
            self._shown = (variants, families)
