"""The routing policy: pure decision code (no web framework, no inference runtime, no torch).

Every front end (the BentoML gateway, the Triton router models) and the simulator run this same
code, so a budget means the same thing whichever door a request comes in by.

    profiles.py    what was measured: service time per batch size, per variant
    estimators.py  what is learned online: slowdown, overhead, the tightest budget, queueing delay
    config.py      the settings, and the checks of a request's budget, floor and batch size
    router.py      `Policy`: composes them into one decision per request (the algorithm is there)
"""

from serving.policy.config import (
    DEFAULT_BENCH_S,
    DEFAULT_LATENCY_BUDGET_MS,
    MAX_LATENCY_BUDGET_MS,
    PolicyConfig,
    check_budget,
)
from serving.policy.estimators import queue_delay
from serving.policy.profiles import ServiceProfile, VariantProfile
from serving.policy.router import NO_EXTERNAL_LOAD, Decision, Executor, ExternalLoad, Policy, policy_from_manifest

__all__ = [
    "DEFAULT_BENCH_S",
    "DEFAULT_LATENCY_BUDGET_MS",
    "MAX_LATENCY_BUDGET_MS",
    "NO_EXTERNAL_LOAD",
    "Decision",
    "Executor",
    "ExternalLoad",
    "Policy",
    "PolicyConfig",
    "ServiceProfile",
    "VariantProfile",
    "check_budget",
    "policy_from_manifest",
    "queue_delay",
]
