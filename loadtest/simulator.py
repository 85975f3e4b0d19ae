"""`flexserve simulate`: a discrete-event simulation of routing policies on profiled variants.

The model of one deployment:

- `replicas` identical gateway replicas behind a load balancer that spreads requests at
  random, so each replica sees its share of the arrivals (a random split of a Poisson stream
  is Poisson; bursts stay synchronised, because all replicas share one burst schedule).
- Each replica runs `workers` requests at once (one ONNX Runtime thread each, as profiled)
  from one first-come-first-served queue, and routes with its own `Policy`: the real policy
  code, on a simulated clock, with the latencies it "observes" fed back as in the gateway.
- A request's service time is drawn from its variant's profiled distribution at its batch
  size (piecewise linear through min, p50, p95, p99, max). Its latency is queueing + service;
  it meets its SLO when that is within its own latency budget.
- Arrivals: `poisson`, or `bursty` (a two-state modulated Poisson process: 25% of the time at
  2x the mean rate, the rest at 2/3 of it; mean dwell 1 s in a burst and 3 s between).

Policies compared on the same arrivals, budgets and random draws:
`adaptive` (the policy as served), `full` (always the most accurate variant), `fastest`
(always the variant with the lowest profiled p50), and `static` (the most accurate variant
whose profiled p95 fits the budget, blind to load: the policy without queueing or online
correction).

Replicas are independent given the random split, so they are simulated in parallel
processes; 64 replicas at 50,000 requests/s for a simulated minute is 3 million routing
decisions.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.manifest import FamilySection
from serving.policy import Policy, PolicyConfig, policy_from_manifest
from training.progress import Progress

POLICIES = ("adaptive", "full", "fastest", "static")
ARRIVALS = ("poisson", "bursty")
# Default SLA classes, as multiples of the most accurate variant's profiled p99 for a typical
# request: every class fits the full model on an idle replica, so `full` starts at 100%.
DEFAULT_BUDGET_CLASSES = ((2.0, 0.3), (4.0, 0.5), (10.0, 0.2))  # (x full p99, share of requests)
# Default loads, as multiples of one replica's capacity when it always serves the full model.
DEFAULT_LOAD_FACTORS = (0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
BURST = (2.0, 1.0, 2 / 3, 3.0)  # (rate multiplier, mean dwell s) in a burst, then between bursts


@dataclass(frozen=True)
class Scenario:
    family: str
    section: FamilySection  # the manifest's family section, with latency_ms
    policy: str = "adaptive"
    arrivals: str = "poisson"
    load_rps: float = 100.0  # over all replicas
    replicas: int = 1
    workers: int = 2  # concurrent requests per replica
    duration_s: float = 30.0
    budgets: tuple[tuple[float, float], ...] = ((10.0, 1.0),)  # (latency_budget_ms, weight)
    seed: int = 0

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {self.arrivals!r}")
        if self.load_rps <= 0 or self.replicas < 1 or self.workers < 1 or self.duration_s <= 0:
            raise ValueError("load_rps and duration_s must be > 0, replicas and workers >= 1")

    @property
    def batch_rows(self) -> int:
        return self.section.rows_per_request


class _Clock:
    """The simulated clock the policy reads (seconds)."""

    __slots__ = ("now",)

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_policy(scenario: Scenario, clock) -> tuple[Policy, str | None]:
    """The policy under test, and the variant it is pinned to (full / fastest)."""
    config = PolicyConfig(queue_aware=False, online=False) if scenario.policy == "static" else PolicyConfig()
    policy = policy_from_manifest(
        scenario.family, scenario.section, executors={"local": scenario.workers}, config=config, clock=clock
    )
    pin = {"full": policy.most_accurate, "fastest": policy.fastest(scenario.batch_rows)}.get(scenario.policy)
    return policy, pin


def burst_schedule(duration_s: float, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """[(start_s, end_s, rate multiplier)] covering the run, alternating calm and burst."""
    high, high_dwell, low, low_dwell = BURST
    segments, t, bursting = [], 0.0, False
    while t < duration_s:
        dwell = rng.exponential(high_dwell if bursting else low_dwell)
        segments.append((t, min(duration_s, t + dwell), high if bursting else low))
        t += dwell
        bursting = not bursting
    return segments


def arrival_times(rate_rps: float, duration_s: float, segments, rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times (ms) of a Poisson process, modulated by `segments` if given."""
    if segments is None:
        segments = [(0.0, duration_s, 1.0)]
    parts = []
    for start, end, multiplier in segments:
        n = rng.poisson(rate_rps * multiplier * (end - start))
        parts.append(rng.uniform(start, end, n))
    times = np.concatenate(parts) if parts else np.empty(0)
    times.sort()
    return times * 1e3


def _service_table(policy: Policy, scenario: Scenario) -> dict[str, tuple[float, ...]]:
    """Per variant: (min, p50, p95, p99, max) service ms at the scenario's batch size."""
    table = {}
    for v in scenario.section.variants:
        rows = {int(b): s for b, s in v.latency_ms.items()}
        b = scenario.batch_rows
        if b in rows:
            s = rows[b]
            p50, p95, p99 = s["p50"], s["p95"], s["p99"]
            lo, hi = s.get("min", 0.9 * p50), s.get("max", p99)
        else:  # between profiled batch sizes: the policy's interpolation
            profile = policy.profile_of(v.name)
            p50, p95, p99 = (profile.at(b, q) for q in ("p50", "p95", "p99"))
            lo, hi = 0.9 * p50, p99
        # The slowest 1% is drawn up to the measured maximum, capped where one stray pause
        # (a page fault, a GC) would otherwise stand for a whole percentile.
        table[v.name] = (lo, p50, p95, p99, min(hi, 2 * p99 - p95))
    return table


def _draw(quantiles: tuple[float, ...], u: float) -> float:
    lo, p50, p95, p99, hi = quantiles
    if u < 0.5:
        return lo + (p50 - lo) * (u / 0.5)
    if u < 0.95:
        return p50 + (p95 - p50) * ((u - 0.5) / 0.45)
    if u < 0.99:
        return p95 + (p99 - p95) * ((u - 0.95) / 0.04)
    return p99 + (hi - p99) * ((u - 0.99) / 0.01)


def simulate_replica(scenario: Scenario, replica: int, segments) -> dict[str, np.ndarray]:
    """One replica's requests: latency, budget, finish time (ms) and variant index."""
    rng = np.random.default_rng([scenario.seed, replica])
    arrivals = arrival_times(scenario.load_rps / scenario.replicas, scenario.duration_s, segments, rng)
    n = len(arrivals)
    budget_values = np.array([b for b, _ in scenario.budgets], dtype=float)
    weights = np.array([w for _, w in scenario.budgets], dtype=float)
    budgets = budget_values[rng.choice(len(budget_values), size=n, p=weights / weights.sum())]
    draws = rng.random(n)
    clock = _Clock()
    policy, pin = make_policy(scenario, clock)
    names = policy.variant_names
    index = {name: i for i, name in enumerate(names)}
    quantiles = _service_table(policy, scenario)
    batch = scenario.batch_rows
    route, finish = policy.route, policy.finish
    free_at = [0.0] * scenario.workers  # a heap: when each worker is next free (ms)
    pending: list = []  # a heap of (finish_ms, seq, decision, service_ms): completions not yet observed
    latency = np.empty(n)
    finished = np.empty(n)
    chosen = np.empty(n, dtype=np.int16)
    arrivals_list, budgets_list, draws_list = arrivals.tolist(), budgets.tolist(), draws.tolist()
    for i in range(n):
        t = arrivals_list[i]
        while pending and pending[0][0] <= t:
            done_ms, _, decision, service = heapq.heappop(pending)
            clock.now = done_ms * 1e-3
            finish(decision, service)
        clock.now = t * 1e-3
        decision = route(budgets_list[i], batch, variant=pin)
        service = _draw(quantiles[decision.variant], draws_list[i])
        start = free_at[0] if free_at[0] > t else t
        done = start + service
        heapq.heapreplace(free_at, done)
        heapq.heappush(pending, (done, i, decision, service))
        latency[i] = done - t
        finished[i] = done
        chosen[i] = index[decision.variant]
    return {"latency": latency, "budget": budgets, "finished": finished, "variant": chosen}


def _run_replicas(args: tuple[Scenario, list[int], list]) -> list[dict[str, np.ndarray]]:
    scenario, replicas, segments = args
    return [simulate_replica(scenario, r, segments) for r in replicas]


def simulate(scenario: Scenario, processes: int | None = None) -> dict:
    """Simulate one scenario; returns its summary row."""
    started = time.perf_counter()
    segments = (
        burst_schedule(scenario.duration_s, np.random.default_rng([scenario.seed, 10**6]))
        if scenario.arrivals == "bursty"
        else None
    )
    processes = max(1, min(processes or os.cpu_count() or 1, scenario.replicas))
    if processes == 1:
        parts = _run_replicas((scenario, list(range(scenario.replicas)), segments))
    else:
        chunks = [list(range(scenario.replicas))[p::processes] for p in range(processes)]
        with ProcessPoolExecutor(processes) as pool:
            parts = [
                part for chunk in pool.map(_run_replicas, [(scenario, c, segments) for c in chunks]) for part in chunk
            ]
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    row = summarise(scenario, merged)
    row["wall_s"] = round(time.perf_counter() - started, 3)
    return row


def summarise(scenario: Scenario, result: dict[str, np.ndarray]) -> dict:
    # Variant indices follow the policy's order (most accurate first); rebuild it to label them.
    order = make_policy(scenario, _Clock())[0]
    names = order.variant_names
    quality = np.array([order.quality(n) for n in names])
    latency, budget, variant = result["latency"], result["budget"], result["variant"]
    n = len(latency)
    fastest = order.fastest(scenario.batch_rows)
    row = {
        "family": scenario.family,
        "policy": scenario.policy,
        "arrivals": scenario.arrivals,
        "load_rps": round(scenario.load_rps, 3),
        "replicas": scenario.replicas,
        "workers": scenario.workers,
        "duration_s": scenario.duration_s,
        "requests": int(n),
        "metric": scenario.section.metric,
        "most_accurate": order.most_accurate,
        "fastest": fastest,
        "most_accurate_p50_ms": order.profile_of(order.most_accurate).at(scenario.batch_rows),
        "fastest_p50_ms": order.profile_of(fastest).at(scenario.batch_rows),
    }
    if n == 0:
        return {
            **row,
            "slo_attainment": math.nan,
            "mean_metric": math.nan,
            "throughput_rps": 0.0,
            "p50_ms": math.nan,
            "p95_ms": math.nan,
            "p99_ms": math.nan,
            "variant_mix": {},
        }
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    counts = np.bincount(variant, minlength=len(names))
    row.update(
        {
            "slo_attainment": round(float((latency <= budget).mean()), 5),
            # The family's metric, averaged over the answers served (RMSE for the recommender).
            "mean_metric": round(float(quality[variant].mean()), 5),
            "throughput_rps": round(
                float((result["finished"] <= scenario.duration_s * 1e3).sum() / scenario.duration_s), 2
            ),
            "p50_ms": round(float(p50), 4),
            "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4),
            "variant_mix": {name: round(float(c / n), 4) for name, c in zip(names, counts, strict=True) if c},
            "slo_by_budget": {f"{b:g}": round(float((latency[budget == b] <= b).mean()), 5) for b in np.unique(budget)},
        }
    )
    return row


def default_budgets(policy: Policy, section: FamilySection) -> tuple[tuple[float, float], ...]:
    p99 = policy.profile_of(policy.most_accurate).at(section.rows_per_request, "p99")
    return tuple((round(factor * p99, 2), weight) for factor, weight in DEFAULT_BUDGET_CLASSES)


def full_capacity_rps(policy: Policy, section: FamilySection, workers: int) -> float:
    """Requests/s one replica sustains when it always serves the most accurate variant."""
    p50 = policy.profile_of(policy.most_accurate).at(section.rows_per_request, "p50")
    return workers * 1e3 / p50


def sweep(
    family: str,
    section: FamilySection,
    *,
    replicas: int = 1,
    workers: int = 2,
    loads: list[float] | None = None,
    budgets: tuple[tuple[float, float], ...] | None = None,
    policies=POLICIES,
    arrivals=ARRIVALS,
    duration_s: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """Every policy x arrival pattern x load for one family; rows as `summarise` makes them."""
    probe = policy_from_manifest(family, section, executors={"local": workers})
    budgets = budgets or default_budgets(probe, section)
    if loads is None:
        capacity = full_capacity_rps(probe, section, workers) * replicas
        loads = [round(capacity * f, 1) for f in DEFAULT_LOAD_FACTORS]
    rows = []
    with Progress(len(arrivals) * len(loads) * len(policies), f"simulate {family}", unit="run") as progress:
        for pattern in arrivals:
            for load in loads:
                # Default: 30 simulated seconds, shortened at high loads to ~200k requests (plenty for a p99).
                seconds = duration_s or min(30.0, max(5.0, 200_000 / load))
                for policy in policies:
                    scenario = Scenario(
                        family, section, policy, pattern, load, replicas, workers, seconds, budgets, seed
                    )
                    row = simulate(scenario)
                    rows.append(row)
                    progress.update(1, note=f"{pattern} {load:g} rps {policy}: SLO {row['slo_attainment']:.2%}")
    return rows


def holds_up_to(rows: list[dict], policy: str, arrivals: str, threshold: float = 0.99) -> float:
    """The highest load before which every load of `policy` keeps SLO attainment >= threshold (0 if none)."""
    best = 0.0
    for row in sorted(
        (r for r in rows if r["policy"] == policy and r["arrivals"] == arrivals), key=lambda r: r["load_rps"]
    ):
        if row["slo_attainment"] < threshold:
            break
        best = row["load_rps"]
    return best


def targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """The routing targets, per family and arrival pattern: (target, measured, met or None if moot)."""
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        for pattern in dict.fromkeys(r["arrivals"] for r in rows if r["family"] == family):
            sub = [r for r in rows if r["family"] == family and r["arrivals"] == pattern]
            if not {"full", "adaptive"} <= {r["policy"] for r in sub}:
                continue  # the targets compare the two
            full, adaptive = holds_up_to(sub, "full", pattern), holds_up_to(sub, "adaptive", pattern)
            ratio = adaptive / full if full else math.inf
            name = f"{family} {pattern}: adaptive holds 99% SLO to >= 2x the load full does"
            first = sub[0]
            if first["most_accurate_p50_ms"] <= 1.25 * first["fastest_p50_ms"]:
                # Nothing to trade: the most accurate variant is (within 25%) the fastest one too.
                out.append(
                    (
                        name,
                        f"n/a: {first['most_accurate']} is the most accurate and within 25% of the "
                        f"fastest ({first['most_accurate_p50_ms']:.3f} vs {first['fastest_p50_ms']:.3f} ms p50)",
                        None,
                    )
                )
            else:
                out.append(
                    (name, f"full {full:g} rps, adaptive {adaptive:g} rps ({ratio:.1f}x)", full > 0 and ratio >= 2)
                )
            low = min(r["load_rps"] for r in sub)
            at_low = {r["policy"]: r for r in sub if r["load_rps"] == low}
            if "full" in at_low and "adaptive" in at_low:
                gap = abs(at_low["full"]["mean_metric"] - at_low["adaptive"]["mean_metric"])
                metric = at_low["full"]["metric"]
                limit = 0.01  # one point of accuracy; the same absolute limit on RMSE
                shown = f"{gap * 100:.2f} points" if metric == "accuracy" else f"{gap:.4f} {metric}"
                out.append(
                    (
                        f"{family} {pattern}: adaptive within 1 point of full at low load ({low:g} rps)",
                        shown,
                        gap <= limit,
                    )
                )
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(2, len(families), figsize=(5.2 * len(families), 7.6), squeeze=False)
    colours = {"adaptive": "tab:green", "full": "tab:blue", "fastest": "tab:orange", "static": "tab:purple"}
    styles = {"poisson": "-", "bursty": "--"}
    for col, family in enumerate(families):
        sub = [r for r in rows if r["family"] == family]
        for policy in dict.fromkeys(r["policy"] for r in sub):
            for pattern in dict.fromkeys(r["arrivals"] for r in sub):
                line = sorted(
                    (r for r in sub if r["policy"] == policy and r["arrivals"] == pattern), key=lambda r: r["load_rps"]
                )
                x = [r["load_rps"] for r in line]
                kw = {
                    "color": colours.get(policy),
                    "linestyle": styles.get(pattern, "-"),
                    "marker": ".",
                    "label": f"{policy} ({pattern})",
                }
                if policy == "full":  # wide and pale underneath: `static` often coincides with it
                    kw.update(linewidth=5, alpha=0.35, marker=None, zorder=1)
                axes[0][col].plot(x, [100 * r["slo_attainment"] for r in line], **kw)
                axes[1][col].plot(x, [r["mean_metric"] for r in line], **kw)
        metric = sub[0]["metric"]
        axes[0][col].axhline(99, color="grey", linewidth=0.8)
        axes[0][col].set_ylim(0, 101)
        axes[0][col].set_title(f"{family}: SLO attainment (99% line)", fontsize=10)
        axes[0][col].set_ylabel("requests within their budget (%)")
        axes[1][col].set_title(f"{family}: mean {metric} of the answers", fontsize=10)
        axes[1][col].set_ylabel(f"mean served {metric}" + (" (lower is better)" if metric == "rmse" else ""))
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"offered load (requests/s, {sub[0]['replicas']} replica(s) x {sub[0]['workers']} workers)")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=9)
    fig.suptitle("FlexServe routing policies in simulation, on the measured latency profiles")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path, dpi=110)


def markdown(rows: list[dict], checks: list[tuple[str, str, bool]]) -> str:
    lines = [
        "| family | arrivals | load (rps) | policy | SLO attainment | mean metric | p50 / p95 / p99 (ms) "
        "| variant mix |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        mix = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["variant_mix"].items(), key=lambda kv: -kv[1])[:3])
        lines.append(
            f"| {r['family']} | {r['arrivals']} | {r['load_rps']:g} | {r['policy']} | "
            f"{r['slo_attainment']:.2%} | {r['metric']} {r['mean_metric']:.4f} | "
            f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f} / {r['p99_ms']:.2f} | {mix} |"
        )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [
        f"| {name} | {measured} | {'n/a' if ok is None else 'PASS' if ok else 'FAIL'} |"
        for name, measured, ok in checks
    ]
    return "\n".join(lines)
