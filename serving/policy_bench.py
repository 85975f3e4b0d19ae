"""`flexserve bench-policy`: what one routing decision costs (route + finish), per family.

Runs the real policy on the repository's profiles with a mix of budgets that makes it walk
past some variants, as under load, and prints the median and p99 per decision.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from serving.policy import policy_from_manifest


def decision_overhead(family: str, section: dict, decisions: int = 20_000, workers: int = 2) -> dict:
    policy = policy_from_manifest(family, section, executors={"local": workers})
    batch = int(section.get("rows_per_request", 1))
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
    return {"family": family, "decisions": decisions, "median_us": round(statistics.median(samples) / 1e3, 3),
            "p99_us": round(samples[int(0.99 * len(samples))] / 1e3, 3),
            "finish_median_us": round(statistics.median(finishes) / 1e3, 3)}
