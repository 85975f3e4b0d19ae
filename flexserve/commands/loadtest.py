"""Load test: `flexserve loadtest` (headless Locust with SLA checks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexserve.commands import command


def _loadtest(args: argparse.Namespace) -> int:
    from loadtest.run import run
    from loadtest.sla import load_spec

    # A malformed SLA or threshold is a one-line error here (exit code 2), before Locust starts.
    load_spec(args.sla_file, args.sla, args.sla_percentile, args.max_failure_ratio, args.min_budget_met)
    return run(
        args.host,
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration=args.duration,
        out=args.out,
        sla=args.sla,
        sla_file=args.sla_file,
        routing=args.routing,
        user_classes=args.user_classes,
        percentile=args.sla_percentile,
        max_failure_ratio=args.max_failure_ratio,
        min_budget_met=args.min_budget_met,
    )


def add_loadtest(commands) -> None:
    from loadtest.sla import DEFAULT_CLASSES, DEFAULT_MAX_FAILURE_RATIO, DEFAULT_MIN_BUDGET_MET, DEFAULT_PERCENTILE

    p = command(
        commands,
        "load test",
        "loadtest",
        "a headless Locust run against the gateway, with SLA checks",
        "flexserve loadtest --host http://127.0.0.1:3000 --users 4 --duration 30s",
        _loadtest,
    )
    p.add_argument("--host", default="http://127.0.0.1:3000", help="the gateway's URL")
    p.add_argument("--users", type=int, default=8, help="concurrent Locust users")
    p.add_argument("--spawn-rate", type=float, default=4, help="users started per second")
    p.add_argument("--duration", default="60s", help="Locust's --run-time, e.g. 30s, 5m")
    p.add_argument("--sla", default=DEFAULT_CLASSES, help="SLA classes NAME=BUDGET_MS[:WEIGHT],...")
    p.add_argument(
        "--sla-file",
        type=Path,
        help="SLA classes and thresholds as JSON, instead of --sla (see loadtest/sla.example.json)",
    )
    p.add_argument(
        "--sla-percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help="percentile of response time checked against each class's budget; an --sla-file's value wins",
    )
    p.add_argument(
        "--max-failure-ratio",
        type=float,
        default=DEFAULT_MAX_FAILURE_RATIO,
        help="most failed requests / requests a class may have and pass; an --sla-file's value wins",
    )
    p.add_argument(
        "--min-budget-met",
        type=float,
        default=DEFAULT_MIN_BUDGET_MET,
        help="least share of a class's answers with budget_met: true; an --sla-file's value wins",
    )
    p.add_argument(
        "--routing",
        choices=["adaptive", "full", "fastest"],
        default="adaptive",
        help="adaptive (the policy), or every request pinned to the most accurate / the fastest variant",
    )
    p.add_argument(
        "--out", type=Path, default=Path("reports/loadtest"), help="Locust's HTML and CSV, sla.json, summary.md"
    )
    p.add_argument("user_classes", nargs="*", help="ImageUser, TextUser, RecommendUser (default: all)")
