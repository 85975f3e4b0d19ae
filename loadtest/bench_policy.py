"""`flexserve bench-policy`: what one routing decision costs (route + finish), per family.

Runs the real policy on the repository's profiles with a mix of budgets that makes it walk
past some variants, as under load, and prints the median and p99 per decision.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from contract.manifest import FamilySection
from serving.policy import policy_from_manifest
from serving.repository import load_repository

TARGET_US = 20.0  # median per route(): routing must stay a small part of a millisecond-scale request


def decision_overhead(family: str, section: FamilySection, decisions: int = 20_000, workers: int = 2) -> dict:
    policy = policy_from_manifest(family, section, executors={"local": workers})
    batch = section.rows_per_request
    p95 = sorted(policy.profile_of(name).at(batch, "p95") for name in policy.variant_names)
    # Budgets from below the fastest variant to above the slowest: every branch of `route`.
    budgets = np.random.default_rng(0).uniform(0.5 * p95[0], 2.0 * p95[-1], decisions).tolist()
    route, finish, clock = policy.route, policy.finish, time.perf_counter_ns
    samples, finishes = [], []
    held = []  # keep a few requests in flight so the queueing term is exercised
    for budget in budgets:
        t0 = clock()
        decision = route(budget, batch)
        t1 = clock()
        held.append(decision)
        if len(held) > workers + 1:
            finish(held.pop(0), 1.0)
        samples.append(t1 - t0)
        finishes.append(clock() - t1)
    samples.sort()
    return {
        "family": family,
        "decisions": decisions,
        "median_us": round(statistics.median(samples) / 1e3, 3),
        "p99_us": round(samples[int(0.99 * len(samples))] / 1e3, 3),
        "finish_median_us": round(statistics.median(finishes) / 1e3, 3),
    }


def run(repo_path: Path, decisions: int = 20_000) -> int:
    repo = load_repository(repo_path, verify=False)
    worst = 0.0
    for family in repo.families:
        result = decision_overhead(family, repo.family(family), decisions=decisions)
        worst = max(worst, result["median_us"])
        print(
            f"{family:<7} route() over {result['decisions']:,} decisions: median {result['median_us']:.2f} us, "
            f"p99 {result['p99_us']:.2f} us; finish() median {result['finish_median_us']:.2f} us"
        )
    verdict = "PASS" if worst <= TARGET_US else "FAIL"
    print(f"target: median <= {TARGET_US:g} us per decision: {verdict} (worst family {worst:.2f} us)")
    return 0
