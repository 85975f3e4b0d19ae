"""The load test's exit code from the SLA verdicts (pure), and the thresholds' one home."""

import itertools
from pathlib import Path

import pytest

from flexserve.cli import build_parser
from loadtest.run import command
from loadtest.sla import (
    DEFAULT_MAX_FAILURE_RATIO,
    DEFAULT_MIN_BUDGET_MET,
    DEFAULT_PERCENTILE,
    SlaClass,
    SlaSpec,
    check,
    exit_code,
)

SPEC = SlaSpec((SlaClass("fast", 20, 1), SlaClass("slow", 200, 1)), max_failure_ratio=0.05, min_budget_met=0.9)


def test_every_class_passing_exits_0_even_with_failures_within_the_ratio():
    results = [check(SPEC, "fast", 100, 5, 10.0, 95), check(SPEC, "slow", 100, 0, 150.0, 100)]
    assert results[0].failures and all(r.ok for r in results)
    assert exit_code(results) == 0


@pytest.mark.parametrize(
    "broken",
    [
        (100, 6, 10.0, 94),  # 6% failed > 5%
        (100, 0, 25.0, 100),  # p95 over the 20 ms budget
        (100, 0, 10.0, 80),  # budget_met 80% < 90%
        (0, 0, 0.0, 0),  # no requests
    ],
)
def test_any_broken_class_exits_1(broken):
    results = [check(SPEC, "fast", *broken), check(SPEC, "slow", 100, 0, 150.0, 100)]
    assert exit_code(results) == 1


def test_nothing_checked_or_the_users_own_code_raising_exits_1():
    passing = [check(SPEC, "slow", 100, 0, 150.0, 100)]
    assert exit_code([]) == 1
    assert exit_code(passing, user_errors=3) == 1 and exit_code(passing, user_errors=0) == 0


@pytest.mark.parametrize("field", ["max_failure_ratio", "min_budget_met"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_thresholds_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SlaSpec((SlaClass("x", 1, 1),), **{field: value})


def test_the_thresholds_defaults_have_one_home():
    spec = SlaSpec((SlaClass("x", 1, 1),))
    assert (spec.percentile, spec.max_failure_ratio, spec.min_budget_met) == (
        DEFAULT_PERCENTILE,
        DEFAULT_MAX_FAILURE_RATIO,
        DEFAULT_MIN_BUDGET_MET,
    )
    args = build_parser().parse_args(["loadtest"])
    assert (args.sla_percentile, args.max_failure_ratio, args.min_budget_met) == (
        DEFAULT_PERCENTILE,
        DEFAULT_MAX_FAILURE_RATIO,
        DEFAULT_MIN_BUDGET_MET,
    )
    source = (Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py").read_text()
    for name in ("DEFAULT_PERCENTILE", "DEFAULT_MAX_FAILURE_RATIO", "DEFAULT_MIN_BUDGET_MET"):
        assert f"default={name}," in source  # the locustfile's options (imported, locust would patch this process)


def test_flexserve_loadtest_passes_its_thresholds_to_locust():
    args = build_parser().parse_args(
        ["loadtest", "--sla-percentile", "99", "--max-failure-ratio", "0.2", "--min-budget-met", "0.5"]
    )
    cmd = command(
        args.host,
        args.users,
        args.spawn_rate,
        args.duration,
        Path("out"),
        args.sla,
        None,
        args.routing,
        [],
        [],
        args.sla_percentile,
        args.max_failure_ratio,
        args.min_budget_met,
    )
    flags = dict(itertools.pairwise(cmd))
    assert (flags["--sla-percentile"], flags["--max-failure-ratio"], flags["--min-budget-met"]) == (
        "99.0",
        "0.2",
        "0.5",
    )
