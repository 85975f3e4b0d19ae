"""The Prometheus observer on a real gateway (the profiled synthetic repository, real ONNX Runtime
sessions): SLO attainment per budget class, and policy gauges equal to what GET /v1/variants reports."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from serving.gateway import Gateway, GatewayConfig, RequestContext
from serving.metrics import PrometheusObserver, make_metrics

IMAGE = [[float((r * 28 + c) % 256) for c in range(28)] for r in range(28)]


def test_a_real_gateway_feeds_the_slo_counters_and_the_policy_gauges(profiled_repo):
    registry = CollectorRegistry()
    observer = PrometheusObserver(make_metrics(registry), refresh_s=3600)  # one refresh at start; then by hand
    gateway = Gateway(GatewayConfig(repo=profiled_repo, parallelism=1, watch_s=0), observer=observer)
    try:
        met = 0
        for budget in (15, 20, 5000):
            answer, done = asyncio.run(gateway.infer("cnn", {"images": [IMAGE]}, RequestContext(budget)))
            done()
            met += answer["budget_met"]
        slo = {
            (s.labels["budget_le_ms"], s.labels["met"]): s.value
            for m in registry.collect()
            if m.name == "flexserve_slo_requests"
            for s in m.samples
            if s.name.endswith("_total") and s.labels["family"] == "cnn"
        }
        assert {b for b, _ in slo} == {"20", "5000"} and sum(slo.values()) == 3
        assert slo.get(("5000", "true")) == 1  # 5 s: met
        assert sum(v for (_, m), v in slo.items() if m == "true") == met  # as the answers said

        state = gateway.variants()
        observer.refresh(state)
        for family, section in state["families"].items():
            overhead = registry.get_sample_value("flexserve_policy_overhead_ms", {"family": family})
            assert overhead == section["overhead_ms"]
            for variant in section["variants"]:
                labels = {"family": family, "variant": variant["name"]}
                assert (
                    registry.get_sample_value("flexserve_policy_predicted_latency_ms", labels)
                    == variant["predicted_ms"]
                )
                assert registry.get_sample_value("flexserve_policy_slowdown", labels) == variant["slowdown"]
        assert state["families"]["cnn"]["overhead_ms"] > 0  # learned from the requests above
    finally:
        gateway.close()
    observer.thread.join(timeout=5)
    assert not observer.thread.is_alive()  # closing the gateway stops the refresh
