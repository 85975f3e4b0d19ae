"""FlexServe's Prometheus metrics, on BentoML's /metrics beside its own."""

from __future__ import annotations

import functools

from serving.gateway import Observer


@functools.cache
def _metrics() -> tuple:
    """Created once per process, after BentoML has set up Prometheus' multiprocess directory."""
    import prometheus_client as prom

    requests = prom.Counter(
        "flexserve_requests",
        "Requests by family, variant and outcome (budget_met, budget_missed, client_error, overload, error)",
        ["family", "variant", "outcome"],
    )
    latency = prom.Histogram(
        "flexserve_request_latency_seconds",
        "Latency measured in the gateway",
        ["family", "variant"],
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    )
    in_flight = prom.Gauge(
        "flexserve_in_flight",
        "Requests running or queued per variant",
        ["family", "variant"],
        multiprocess_mode="livesum",
    )
    failures = prom.Counter(
        "flexserve_variant_failures",
        "Variant runs that raised or answered NaN where another variant then answered (the variant was benched)",
        ["family", "variant"],
    )
    return requests, latency, in_flight, failures


class PrometheusObserver(Observer):
    def __init__(self):
        self.requests, self.latency, self.in_flight, self.failures = _metrics()

    def started(self, family: str, variant: str) -> None:
        self.in_flight.labels(family=family, variant=variant).inc()

    def finished(self, family: str, variant: str, outcome: str, latency_s: float) -> None:
        self.in_flight.labels(family=family, variant=variant).dec()
        self.requests.labels(family=family, variant=variant, outcome=outcome).inc()
        self.latency.labels(family=family, variant=variant).observe(latency_s)

    def variant_failed(self, family: str, variant: str) -> None:
        self.failures.labels(family=family, variant=variant).inc()

    def rejected(self, family: str, outcome: str) -> None:
        self.requests.labels(family=family, variant="none", outcome=outcome).inc()
