"""FlexServe's Prometheus metrics (serving/metrics.py) on a fresh registry, and the Grafana dashboard
(docs/grafana/flexserve.json): it parses, and its queries use only the metrics and labels exported."""

from __future__ import annotations

import gc
import json
import math
import re
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from serving.metrics import BUDGET_CLASSES_MS, PrometheusObserver, budget_class, make_metrics
from serving.policy import Policy, ServiceProfile, VariantProfile

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "flexserve.json"


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
def observer(registry):
    observer = PrometheusObserver(make_metrics(registry), refresh_s=0.01)
    yield observer
    observer.routing_state(None)


def value(registry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# -- budget classes ---------------------------------------------------------------------------
def test_a_budget_counts_in_the_first_class_whose_bound_holds_it():
    assert list(BUDGET_CLASSES_MS) == sorted(BUDGET_CLASSES_MS)
    assert budget_class(0.001) == "5" and budget_class(5) == "5" and budget_class(5.01) == "10"
    assert budget_class(20) == "20" and budget_class(50) == "50" and budget_class(200) == "200"
    assert budget_class(BUDGET_CLASSES_MS[-1]) == f"{BUDGET_CLASSES_MS[-1]:g}"
    assert budget_class(BUDGET_CLASSES_MS[-1] + 1) == "+Inf" and budget_class(60_000) == "+Inf"


# -- per request --------------------------------------------------------------------------------
def test_requests_latency_in_flight_and_slo_attainment_per_budget_class(observer, registry):
    for outcome, budget in [("budget_met", 20), ("budget_met", 18), ("budget_missed", 20), ("budget_met", 500)]:
        observer.started("cnn", "cnn_full_fp32")
        assert value(registry, "flexserve_in_flight", family="cnn", variant="cnn_full_fp32") == 1
        observer.finished("cnn", "cnn_full_fp32", outcome, 0.004, budget)
    assert value(registry, "flexserve_in_flight", family="cnn", variant="cnn_full_fp32") == 0
    slo = "flexserve_slo_requests_total"
    assert value(registry, slo, family="cnn", budget_le_ms="20", met="true") == 2
    assert value(registry, slo, family="cnn", budget_le_ms="20", met="false") == 1
    assert value(registry, slo, family="cnn", budget_le_ms="500", met="true") == 1
    assert value(registry, slo, family="cnn", budget_le_ms="500", met="false") is None
    requests = "flexserve_requests_total"
    assert value(registry, requests, family="cnn", variant="cnn_full_fp32", outcome="budget_met") == 3
    assert value(registry, requests, family="cnn", variant="cnn_full_fp32", outcome="budget_missed") == 1
    assert value(registry, "flexserve_request_latency_seconds_count", family="cnn", variant="cnn_full_fp32") == 4
    assert (
        value(registry, "flexserve_request_latency_seconds_bucket", family="cnn", variant="cnn_full_fp32", le="0.005")
        == 4
    )


def test_a_failed_variant_run_or_a_refusal_is_not_counted_in_slo_attainment(observer, registry):
    observer.started("rnn", "rnn_a")
    observer.finished("rnn", "rnn_a", "error", 0.002, 50)
    observer.variant_failed("rnn", "rnn_a")
    observer.rejected("rnn", "overload")
    assert value(registry, "flexserve_requests_total", family="rnn", variant="rnn_a", outcome="error") == 1
    assert value(registry, "flexserve_requests_total", family="rnn", variant="none", outcome="overload") == 1
    assert value(registry, "flexserve_variant_failures_total", family="rnn", variant="rnn_a") == 1
    assert value(registry, "flexserve_in_flight", family="rnn", variant="rnn_a") == 0
    assert not [s for m in registry.collect() if m.name == "flexserve_slo_requests" for s in m.samples]


# -- the policy gauges --------------------------------------------------------------------------
def profile(p95: float) -> ServiceProfile:
    return ServiceProfile((1, 8), (0.8 * p95, 6.4 * p95), (p95, 8 * p95), (1.2 * p95, 9.6 * p95))


class FakeGateway:
    """`Gateway.variants()`'s policy part, over real policies."""

    def __init__(self, *policies: Policy):
        self.policies = {p.family: p for p in policies}

    def variants(self) -> dict:
        return {
            "families": {
                family: {"overhead_ms": round(policy.overhead_ms, 4), "variants": policy.snapshot()}
                for family, policy in self.policies.items()
            }
        }


def gauges(registry, family: str, variant: str) -> tuple:
    return (
        value(registry, "flexserve_policy_predicted_latency_ms", family=family, variant=variant),
        value(registry, "flexserve_policy_slowdown", family=family, variant=variant),
    )


def test_the_policy_gauges_follow_what_get_v1_variants_reports(observer, registry):
    variants = [VariantProfile("big", 0.9, profile(10.0)), VariantProfile("small", 0.8, profile(1.0))]
    policy = Policy("cnn", variants, clock=lambda: 100.0)  # a stopped clock: the slowdown does not decay
    gateway = FakeGateway(policy)
    observer.routing_state(gateway.variants)
    wait_for(lambda: gauges(registry, "cnn", "big")[0] is not None)  # set at once, from the thread
    assert gauges(registry, "cnn", "big") == (10.0, 1.0) and gauges(registry, "cnn", "small") == (1.0, 1.0)
    assert value(registry, "flexserve_policy_overhead_ms", family="cnn") == 0.0

    decision = policy.route(1000)  # big, observed 3x slower than profiled; the overhead is learned
    policy.finish(decision, 3 * 8.0, latency_ms=50.0)
    expected = {v["name"]: v for v in gateway.variants()["families"]["cnn"]["variants"]}
    assert expected["big"]["slowdown"] > 1.2 and policy.overhead_ms > 1
    wait_for(lambda: gauges(registry, "cnn", "big")[1] > 1.2)  # the next refresh: what /v1/variants says
    assert gauges(registry, "cnn", "big") == (expected["big"]["predicted_ms"], expected["big"]["slowdown"])
    assert gauges(registry, "cnn", "small") == (expected["small"]["predicted_ms"], 1.0)
    assert value(registry, "flexserve_policy_overhead_ms", family="cnn") == round(policy.overhead_ms, 4)


def test_a_variant_or_family_no_longer_served_reads_nan(observer, registry):
    cnn = Policy("cnn", [VariantProfile("big", 0.9, profile(10.0)), VariantProfile("small", 0.8, profile(1.0))])
    rnn = Policy("rnn", [VariantProfile("r", 0.7, profile(2.0))])
    observer.refresh(FakeGateway(cnn, rnn).variants())
    assert gauges(registry, "rnn", "r") == (2.0, 1.0)
    observer.refresh(FakeGateway(Policy("cnn", [VariantProfile("small", 0.8, profile(1.0))])).variants())
    assert all(math.isnan(v) for v in (*gauges(registry, "cnn", "big"), *gauges(registry, "rnn", "r")))
    assert math.isnan(value(registry, "flexserve_policy_overhead_ms", family="rnn"))
    assert gauges(registry, "cnn", "small") == (1.0, 1.0)


def test_the_refresh_thread_stops_when_the_gateway_closes_or_is_gone(observer):
    gateway = FakeGateway(Policy("cnn", [VariantProfile("v", 0.9, profile(1.0))]))
    observer.routing_state(gateway.variants)
    first = observer.thread
    observer.routing_state(None)  # closed
    first.join(timeout=5)
    assert not first.is_alive()
    observer.routing_state(gateway.variants)
    second = observer.thread
    assert second.is_alive()
    del gateway  # the thread holds it weakly
    gc.collect()
    second.join(timeout=5)
    assert not second.is_alive()


# -- the Grafana dashboard ----------------------------------------------------------------------
def exported(registry) -> tuple[dict[str, str], set[str]]:
    """{sample name as scraped: metric name} and the label names of FlexServe's metrics."""
    metrics = make_metrics(registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = {m.name + s: m.name for m in registry.collect() for s in suffixes[m.type]}
    labels = {label for metric in metrics for label in metric._labelnames} | {"le"}
    return names, labels


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"])
    return exprs


def test_the_dashboard_is_a_grafana_model_on_a_templated_prometheus_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    assert variables["family"]["datasource"] == datasource
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == datasource and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource and target["refId"] and target["expr"]
    titles = " / ".join(p["title"].lower() for p in panels)
    for topic in ["request rate", "p50", "p99", "slo attainment", "predicted", "slowdown", "overhead", "in flight"]:
        assert topic in titles
    assert "failures" in titles and "refusals" in titles


def test_every_metric_and_label_in_the_dashboard_queries_is_one_flexserve_exports(registry):
    names, labels = exported(registry)
    used_metrics = set()
    for expr in dashboard_queries(json.loads(DASHBOARD.read_text())):
        for opening, closing in ["()", "{}", "[]"]:
            assert expr.count(opening) == expr.count(closing), expr
        for name in re.findall(r"\bflexserve_\w+", expr):
            assert name in names, f"{name} (in {expr!r}) is not a metric FlexServe exports: {sorted(names)}"
            used_metrics.add(names[name])
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= labels, expr
        for selector in re.findall(r"\{([^}]*)\}", expr):
            if "{{" in selector:
                continue
            assert set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector)) <= labels, expr
        for label in re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr):
            assert label in labels, expr
    assert used_metrics == set(names.values())  # and every metric has a panel
