"""The discrete-event simulator on a synthetic family section (no runtime, no files)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from contract.manifest import FamilySection, VariantEntry
from loadtest import simulator
from loadtest.simulator import Scenario, simulate


def stats(p50: float) -> dict:
    return {"p50": p50, "p95": 1.3 * p50, "p99": 1.6 * p50, "min": 0.8 * p50, "max": 2.0 * p50}


def flat(ms: float) -> dict:
    """Deterministic service: every quantile the same."""
    return {q: ms for q in ("min", "p50", "p95", "p99", "max")}


def section(full_ms: float = 4.0, student_ms: float = 0.5, stats=stats) -> FamilySection:
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


# -- balancers, the HTTP stage, CPU contention, slo_load ------------------------------------


def deterministic(ms: float = 1.0) -> FamilySection:
    """One variant whose service time is always `ms` per row."""
    full = section(ms, ms, stats=flat)
    return FamilySection(**{**vars(full), "variants": full.variants[:1]})


def test_scenario_names_the_field_and_the_accepted_values():
    with pytest.raises(ValueError, match=r"balancer must be one of random, p2c, least-latency, got 'round-robin'"):
        Scenario("x", section(), balancer="round-robin")
    with pytest.raises(ValueError, match="http_cpu_ms must be a finite number >= 0"):
        Scenario("x", section(), http_cpu_ms=-1.0)
    with pytest.raises(ValueError, match="cores must be > 0"):
        Scenario("x", section(), cores=0)
    with pytest.raises(ValueError, match="parallelism >= 1"):
        Scenario("x", section(), parallelism=0)


def in_flight_at_arrival(detail: dict, replicas: int) -> np.ndarray:
    """Recomputed from the outcome alone: per request, each replica's requests in flight when it
    arrived (sent there before it, not yet answered; answers at the same instant come first)."""
    arrival, finished, replica = detail["arrival"], detail["finished"], detail["replica"]
    counts = np.zeros((len(arrival), replicas), dtype=int)
    for r in range(replicas):
        mine = replica == r
        sent_before = np.cumsum(mine) - mine  # requests sent to r before this one
        answered = np.searchsorted(np.sort(finished[mine]), arrival, side="right")
        counts[:, r] = sent_before - answered
    return counts


def test_p2c_never_sends_to_the_busier_of_its_two_choices():
    scenario = Scenario(
        "x", section(), "full", "poisson", 1800.0, replicas=8, parallelism=1, duration_s=1.0, budgets=BUDGETS
    )
    detail = simulate(replace(scenario, balancer="p2c"), trace=True)["requests_detail"]
    pair, offered, chosen = detail["pair"], detail["pair_in_flight"], detail["replica"]
    assert np.all(pair[:, 0] != pair[:, 1])
    in_flight = in_flight_at_arrival(detail, 8)
    rows = np.arange(len(chosen))
    assert np.array_equal(offered, in_flight[rows[:, None], pair])  # what it compared is what was there
    first = chosen == pair[:, 0]
    assert np.all(first | (chosen == pair[:, 1]))
    other = np.where(first, pair[:, 1], pair[:, 0])
    assert np.all(in_flight[rows, chosen] <= in_flight[rows, other])
    ties = offered[:, 0] == offered[:, 1]
    assert ties.sum() > 100 and 0.4 < first[ties].mean() < 0.6  # ties are broken at random
    assert (~ties).sum() > 100  # and there were real choices to make


def test_balancers_see_the_same_requests():
    rows = [
        simulate(
            Scenario("x", section(), "adaptive", "bursty", 900.0, 4, duration_s=2.0, budgets=BUDGETS, balancer=b),
            processes=1,
        )
        for b in simulator.BALANCERS
    ]
    assert len({r["requests"] for r in rows}) == 1
    assert [r["balancer"] for r in rows] == list(simulator.BALANCERS)
    assert all(0.95 < r["busiest_replica_x_mean"] < 1.2 for r in rows)


def test_least_latency_chooses_the_lowest_predicted_latency():
    # Profiled p95s, most accurate first (not sorted by speed): the choice is the first that fits.
    p95 = [5.0, 6.0, 2.0, 2.5, 0.5]
    rng = np.random.default_rng(3)
    ranking = simulator._Ranking(16, p95, seed=1)
    for _ in range(300):
        r = int(rng.integers(16))
        ranking.update(r, float(rng.choice([0.0, rng.exponential(4.0)])))
        limit = float(rng.uniform(1.0, 15.0))
        waits = np.array([key[0] for key in ranking.keys])
        predicted = [next((w + p for p in p95 if w + p <= limit), w + min(p95)) for w in waits]
        assert predicted[ranking.best(limit)] == pytest.approx(min(predicted))
    # Equal predictions: any of them, uniformly (an idle replica is never starved by a fixed order).
    even = simulator._Ranking(8, p95, seed=2)
    picks = np.bincount([even.best(10.0) for _ in range(8000)], minlength=8)
    assert picks.min() > 850 and picks.max() < 1150


def test_least_latency_beats_a_random_split_at_high_load():
    # A random split leaves some replicas queueing while others idle: at 80% of the full model's
    # capacity, the random balancer's SLO attainment suffers; sending each request where the
    # policy predicts the shortest wait keeps it near 99%. Over several seeds, not one lucky one.
    def attainment(balancer: str) -> float:
        return np.mean(
            [
                simulate(
                    Scenario(
                        "x", section(), "full", "poisson", 800.0, 4, 1, 2.0, BUDGETS, seed=seed, balancer=balancer
                    ),
                    processes=1,
                )["slo_attainment"]
                for seed in range(5)
            ]
        )

    random_split, least = attainment("random"), attainment("least-latency")
    assert least > random_split + 0.05
    assert least > 0.95


def test_cpu_contention_stretches_a_stage_from_the_moment_it_starts():
    # Four requests at once, four model threads, two cores: the third and fourth start with 3
    # and 4 busy threads on 2 cores, so they take 1.5x and 2x the profiled 1 ms.
    arrival, budget, draw = np.zeros(4), np.full(4, 50.0), np.full(4, 0.5)
    scenario = Scenario("x", deterministic(), "full", parallelism=4, budgets=((50.0, 1.0),))
    plain = simulator.simulate_requests(scenario, arrival, budget, draw)
    assert plain["latency"].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    squeezed = simulator.simulate_requests(replace(scenario, cores=2), arrival, budget, draw)
    assert squeezed["latency"].tolist() == pytest.approx([1.0, 1.0, 1.5, 2.0])
    # The event loop counts as a busy thread: two requests, a 0.5 ms HTTP stage, one model thread,
    # one core. Request 0: loop 0-0.5, model from 0.5 with the loop busy on request 1 (2x): 0.5-2.5.
    # Request 1: loop 0.5-1.0 (the model not started yet: 1x), queued, model 2.5-3.5 alone.
    two = simulator.simulate_requests(
        replace(scenario, parallelism=1, http_cpu_ms=0.5, cores=1), arrival[:2], budget[:2], draw[:2]
    )
    assert two["latency"].tolist() == pytest.approx([2.5, 3.5])


def test_http_cpu_and_cores_lower_the_slo_load_as_expected():
    # Deterministic 1 ms model runs, two threads, a loose 50 ms budget: a replica holds the SLO
    # to about its capacity. No HTTP stage: 2 threads / 1 ms = 2000 rps. A 1 ms HTTP stage on one
    # event loop: 1000 rps. And on one core, 2 ms of CPU per request: 500 rps.
    base = Scenario("x", deterministic(), "full", "poisson", 100.0, 1, 2, 2.0, ((50.0, 1.0),))

    def found(**kw) -> float:
        return simulator.slo_load(replace(base, **kw), lo=200, hi=4000, seeds=(0,), grid=5, rel_tol=0.03).load_rps

    assert found() == pytest.approx(2000, rel=0.1)
    assert found(http_cpu_ms=1.0) == pytest.approx(1000, rel=0.1)
    assert found(http_cpu_ms=1.0, cores=1) == pytest.approx(500, rel=0.1)


def test_slo_load_finds_a_known_threshold_on_a_monotone_toy():
    # Attainment 1 - 0.05 (load / 1000)^4 (+ a seed's noise of +-0.001): 0.99 at ~668.7 rps.
    def evaluate(run: tuple[float, int]) -> float:
        load, seed = run
        return 1 - 0.05 * (load / 1000) ** 4 + 0.001 * (1 if seed % 2 else -1)

    found = simulator.slo_load(lambda load, seed: (load, seed), lo=100, hi=2000, seeds=(0, 1), evaluate=evaluate)
    assert found.load_rps == pytest.approx(0.2**0.25 * 1000, rel=0.02)
    assert found.load_rps <= 0.2**0.25 * 1000  # the answer holds the threshold
    loads = [load for load, _ in found.points]
    assert loads == sorted(loads) and len(loads) < 15
    never = simulator.slo_load(lambda load, seed: (load, seed), lo=800, hi=2000, seeds=(0,), evaluate=evaluate)
    assert never.load_rps == 0.0 and len(never.points) == 1
    always = simulator.slo_load(lambda load, seed: (load, seed), lo=10, hi=500, seeds=(0,), evaluate=evaluate)
    assert always.load_rps == 500
    with pytest.raises(ValueError, match="lo < hi"):
        simulator.slo_load(lambda load, seed: (load, seed), lo=5, hi=5, evaluate=evaluate)


def test_sweep_and_reports_distinguish_balancers():
    rows = simulator.sweep(
        "x",
        section(),
        replicas=2,
        parallelism=1,
        loads=[200.0, 900.0],
        budgets=BUDGETS,
        policies=["adaptive", "full"],
        arrivals=["poisson"],
        balancers=["random", "p2c"],
        duration_s=1.0,
        processes=1,
    )
    assert len(rows) == 8 and {r["parallelism"] for r in rows} == {1}
    text = simulator.markdown(rows, simulator.targets(rows))
    assert "| p2c |" in text and "| random |" in text
    names = [name for name, _, _ in simulator.targets(rows)]
    assert any("(p2c balancer)" in n for n in names) and any("balancer" not in n for n in names)
    assert simulator.holds_up_to(rows, "full", "poisson", balancer="p2c") in (0.0, 200.0, 900.0)


def test_simulate_command_options():
    from flexserve.cli import build_parser

    args = build_parser().parse_args(
        ["simulate", "--parallelism", "3", "--balancer", "p2c", "least-latency", "--http-cpu-ms", "0.2", "--cores", "4"]
    )
    assert (args.parallelism, args.balancer, args.http_cpu_ms, args.cores) == (3, ["p2c", "least-latency"], 0.2, 4.0)
    defaults = build_parser().parse_args(["simulate"])
    assert (defaults.parallelism, defaults.balancer, defaults.http_cpu_ms, defaults.cores) == (2, ["random"], 0.0, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--balancer", "round-robin"])
