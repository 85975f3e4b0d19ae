"""The policy's estimators: small pieces of state with explicit clocks, each one idea.

- `queue_delay`: how long a new request waits behind the work in flight on an executor.
- `Slowdown`: observed / profiled service time of one variant, smoothed, decaying back to 1.
- `LearnedOverhead`: what predictions missed, planned for at its tail.
- `TightBudget`: the tightest budget seen recently, relaxing towards the budgets now arriving.

None of them takes a lock: the policy calls them under its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def queue_delay(work_ms: float, in_flight: float, parallelism: int) -> float:
    """The wait of a request that finds `in_flight` requests carrying `work_ms` of predicted service
    on an executor running `parallelism` at once: nothing while a slot is free, else the work per
    slot less half of one request's share (the running ones are assumed half done). The work is a
    sum of p95s, which overstates the p95 of the sum: the safe side. `in_flight` may be fractional
    when it includes other clients' load (a mean: `ExternalLoad`)."""
    if in_flight < parallelism:
        return 0.0
    return max(0.0, work_ms / parallelism - 0.5 * work_ms / in_flight)


@dataclass(slots=True)
class Slowdown:
    """Observed / profiled service time (an exponentially weighted mean). A variant that lost its
    traffic reports nothing, so the factor decays back towards 1 with a half-life: it is tried again,
    and either stays (recovered) or is pushed out again by what it reports."""

    factor: float = 1.0
    observed_at: float = -math.inf

    def at(self, now: float, half_life_s: float) -> float:
        factor = self.factor
        if factor == 1.0:
            return factor
        age = now - self.observed_at
        return 1.0 + (factor - 1.0) * 2.0 ** (-age / half_life_s) if age > 0 else factor

    def observe(self, ratio: float, now: float, half_life_s: float, weight: float, low: float, high: float) -> None:
        blended = (1.0 - weight) * self.at(now, half_life_s) + weight * ratio
        self.factor = min(max(blended, low), high)
        self.observed_at = now


@dataclass(slots=True)
class LearnedOverhead:
    """What the policy's predictions missed: a request's whole time in the server less its predicted
    queueing and service (HTTP, validation, thread hops, service jitter the profile did not see).
    Planned for as mean + k mean deviations: the estimator TCP uses for its retransmission timeout."""

    mean_ms: float = 0.0
    deviation_ms: float = 0.0
    planned_ms: float = 0.0  # what predictions add

    def observe(self, missed_ms: float, weight: float, deviations: float) -> None:
        self.deviation_ms = (1.0 - weight) * self.deviation_ms + weight * abs(missed_ms - self.mean_ms)
        self.mean_ms = (1.0 - weight) * self.mean_ms + weight * missed_ms
        self.planned_ms = max(0.0, self.mean_ms + deviations * self.deviation_ms)


@dataclass(slots=True)
class TightBudget:
    """The tightest budget seen recently: a minimum that relaxes towards each new budget with a half-life."""

    ms: float = math.inf
    at: float = 0.0

    def update(self, budget_ms: float, now: float, half_life_s: float) -> float:
        tight = self.ms
        if tight < budget_ms:
            tight += (budget_ms - tight) * (1.0 - 2.0 ** (-(now - self.at) / half_life_s))
        self.ms, self.at = min(tight, budget_ms), now
        return self.ms
