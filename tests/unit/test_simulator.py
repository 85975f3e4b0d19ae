"""The discrete-event simulator on a synthetic family section (no runtime, no files)."""

from __future__ import annotations

import numpy as np
import pytest

from contract.manifest import FamilySection, VariantEntry
from loadtest import simulator
from loadtest.simulator import Scenario, simulate


def stats(p50: float) -> dict:
    return {"p50": p50, "p95": 1.3 * p50, "p99": 1.6 * p50, "min": 0.8 * p50, "max": 2.0 * p50}


def section(full_ms: float = 4.0, student_ms: float = 0.5) -> FamilySection:
    """A family whose full model is 8x slower than its student."""

    def variant(name, accuracy, ms):
        return VariantEntry(
            name,
            "full",
            "fp32",
            f"{name}.onnx",
            "0",
            1,
            1,
            {"accuracy": accuracy},
            latency_ms={str(b): stats(ms * b) for b in (1, 4, 16, 64)},
        )

    return FamilySection(
        task="classification",
        metric="accuracy",
        higher_is_better=True,
        inputs=(),
        outputs=(),
        variants=(variant("x_full_fp32", 0.92, full_ms), variant("x_distilled_fp32", 0.90, student_ms)),
    )


BUDGETS = ((15.0, 0.5), (40.0, 0.5))


def run(policy: str, load: float, **kw) -> dict:
    kw.setdefault("duration_s", 10.0)
    return simulate(
        Scenario("x", section(), policy, kw.pop("arrivals", "poisson"), load, budgets=BUDGETS, **kw),
        processes=kw.pop("processes", 1) if "processes" in kw else 1,
    )


def test_rows_carry_the_reported_fields():
    row = run("adaptive", 100.0)
    for key in (
        "policy",
        "load_rps",
        "slo_attainment",
        "mean_metric",
        "p99_ms",
        "throughput_rps",
        "p50_ms",
        "p95_ms",
        "variant_mix",
        "requests",
    ):
        assert key in row
    assert row["requests"] == pytest.approx(1000, rel=0.15)  # 100 rps x 10 s
    assert row["throughput_rps"] == pytest.approx(100, rel=0.15)


def test_at_low_load_adaptive_serves_the_full_model_like_full():
    adaptive, full = run("adaptive", 20.0), run("full", 20.0)
    assert full["slo_attainment"] == 1.0 and adaptive["slo_attainment"] == 1.0
    assert adaptive["mean_metric"] == pytest.approx(0.92, abs=0.002)
    assert adaptive["requests"] == full["requests"]  # the same arrivals


def test_under_overload_adaptive_keeps_the_slo_that_full_loses():
    # Two workers: full saturates at 2 / 4 ms = 500 rps; at 800 rps its queue grows without bound.
    full, adaptive = run("full", 800.0), run("adaptive", 800.0)
    assert full["slo_attainment"] < 0.5
    assert adaptive["slo_attainment"] >= 0.99
    assert 0.90 < adaptive["mean_metric"] < 0.92  # a mix of both variants
    assert set(adaptive["variant_mix"]) == {"x_full_fp32", "x_distilled_fp32"}


def test_fastest_and_static_policies():
    fastest = run("fastest", 20.0)
    assert fastest["variant_mix"] == {"x_distilled_fp32": 1.0}
    # static: full's profiled p95 (5.2 ms) fits both budgets, so it is full at any load.
    static = run("static", 800.0)
    assert static["variant_mix"] == {"x_full_fp32": 1.0} and static["slo_attainment"] < 0.5


def test_bursty_arrivals_keep_the_mean_rate_but_hurt_more():
    segments = simulator.burst_schedule(600.0, np.random.default_rng(1))
    times = simulator.arrival_times(100.0, 600.0, segments, np.random.default_rng(2))
    assert len(times) / 600.0 == pytest.approx(100.0, rel=0.1)
    assert np.all(np.diff(times) >= 0)
    poisson, bursty = run("full", 420.0, duration_s=60.0), run("full", 420.0, duration_s=60.0, arrivals="bursty")
    assert bursty["p99_ms"] > poisson["p99_ms"]


def test_replicas_in_parallel_processes_give_the_same_answer():
    one = simulate(
        Scenario("x", section(), "adaptive", "poisson", 400.0, replicas=4, duration_s=5.0, budgets=BUDGETS), processes=1
    )
    two = simulate(
        Scenario("x", section(), "adaptive", "poisson", 400.0, replicas=4, duration_s=5.0, budgets=BUDGETS), processes=2
    )
    for key in ("requests", "slo_attainment", "mean_metric", "p99_ms"):
        assert one[key] == two[key]


def test_targets_compare_the_load_each_policy_holds():
    rows = [
        {
            "family": "x",
            "arrivals": "poisson",
            "policy": p,
            "load_rps": load,
            "slo_attainment": slo,
            "mean_metric": acc,
            "metric": "accuracy",
            "most_accurate": "x_full",
            "fastest": "x_student",
            "most_accurate_p50_ms": 4.0,
            "fastest_p50_ms": 0.5,
        }
        for p, acc, curve in (("full", 0.92, [1.0, 0.995, 0.9, 0.5]), ("adaptive", 0.915, [1.0, 1.0, 0.999, 0.98]))
        for load, slo in zip((100, 200, 400, 800), curve, strict=True)
    ]
    assert simulator.holds_up_to(rows, "full", "poisson") == 200
    assert simulator.holds_up_to(rows, "adaptive", "poisson") == 400
    checks = simulator.targets(rows)
    assert [ok for _, _, ok in checks] == [True, True]
    rows[-1 - 3]["slo_attainment"] = 0.5  # adaptive now breaks at 400 rps (1x full's)
    assert simulator.targets(rows)[0][2] is False
    for row in rows:  # the most accurate variant is also the fastest: nothing to trade
        row["most_accurate_p50_ms"] = 0.55
    assert simulator.targets(rows)[0][2] is None and "n/a" in simulator.targets(rows)[0][1]


def test_scenario_rejects_unknown_policies():
    with pytest.raises(ValueError, match="adaptive, full, fastest, static"):
        Scenario("x", section(), "greedy")
