"""Measure: `flexserve profile`, `simulate`, and the `bench-*` commands (policy, gateway, triton, routing, byom,
coldstart, federated)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexserve.commands import command, repo_option
from flexserve.commands.build import federated_options, federated_settings
from training import BUILT_IN_FAMILIES


def _profile(args: argparse.Namespace) -> int:
    from loadtest.profile import ProfileSettings, profile

    families = None if args.family == "all" else [args.family]
    settings = ProfileSettings(
        device=args.device, threads=args.threads, min_runs=args.min_runs, seconds_per_point=args.seconds
    )
    manifest = profile(args.repo, settings, families, missing_only=args.missing_only, register=args.register)
    for family in families or manifest.families:
        for variant in manifest.families[family].variants:
            cells = "  ".join(
                f"b{b}: {s['p50']:.3f}/{s['p95']:.3f}/{s['p99']:.3f}" for b, s in (variant.latency_ms or {}).items()
            )
            print(f"{variant.name:<26} p50/p95/p99 ms  {cells}")
    return 0


def add_profile(commands) -> None:
    p = command(
        commands,
        "measure",
        "profile",
        "measure p50/p95/p99 per variant and batch size on this machine, into the manifest",
        "flexserve profile --missing-only",
        _profile,
    )
    repo_option(p)
    p.add_argument("--family", default="all", help="one family of the repository, or all")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime's execution provider")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per request, as serving runs them")
    p.add_argument("--min-runs", type=int, default=30, help="timed runs per variant and batch size, at least")
    p.add_argument("--seconds", type=float, default=0.25, help="time slice per variant and batch size")
    p.add_argument("--missing-only", action="store_true", help="only families with unprofiled variants")
    p.add_argument(
        "--register",
        action="store_true",
        help="also store the profiled repository in BentoML's "
        "model store (a new version of flexserve-model-repository)",
    )


def _budgets(text: str) -> tuple[tuple[float, float], ...]:
    """`5:0.3,20:0.5,200:0.2` -> ((5, 0.3), ...); a budget without `:weight` weighs 1."""
    out = []
    for item in text.split(","):
        budget, _, weight = item.partition(":")
        try:
            out.append((float(budget), float(weight) if weight else 1.0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected MS or MS:WEIGHT, e.g. 5:0.3,20:0.5,200:0.2") from None
    if any(b <= 0 or w <= 0 for b, w in out):
        raise argparse.ArgumentTypeError("budgets and weights must be > 0")
    return tuple(out)


def _simulate(args: argparse.Namespace) -> int:
    import json

    from loadtest import simulator
    from serving.repository import load_repository

    repo = load_repository(args.repo, verify=False)
    families = repo.families if args.family == "all" else [args.family]
    rows = []
    for family in families:
        rows += simulator.sweep(
            family,
            repo.family(family),
            replicas=args.replicas,
            parallelism=args.parallelism,
            loads=args.loads,
            budgets=args.budgets,
            policies=args.policies,
            arrivals=args.arrivals,
            balancers=args.balancer,
            http_cpu_ms=args.http_cpu_ms,
            cores=args.cores,
            duration_s=args.duration,
            seed=args.seed,
        )
    text = simulator.markdown(rows, simulator.targets(rows))
    print(text)
    for path, content in ((args.json, lambda: json.dumps(rows, indent=1)), (args.markdown, lambda: text + "\n")):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content())
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        simulator.plot(rows, args.plot)
    return 0


def add_simulate(commands) -> None:
    p = command(
        commands,
        "measure",
        "simulate",
        "discrete-event simulation of the routing policies on the measured profiles",
        "flexserve simulate --family cnn --replicas 64 --arrivals bursty --balancer random p2c least-latency "
        "--loads 32000 64000 --duration 20",
        _simulate,
    )
    repo_option(p)
    import math

    def positive(kind: type, zero: bool = False):
        """An argparse type: a finite number > 0 (>= 0 with `zero`)."""

        def parse(text: str):
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
            if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
                raise argparse.ArgumentTypeError(f"{text}: expected a finite number {'>= 0' if zero else '> 0'}")
            return value

        return parse

    p.add_argument("--family", default="all", help="one family of the repository, or all")
    p.add_argument(
        "--replicas", type=int, default=1, help="gateway replicas (one gateway process each, with its own policy)"
    )
    p.add_argument(
        "--parallelism",
        type=positive(int),
        default=2,
        help="concurrent model runs per replica, one thread each",
    )
    p.add_argument(
        "--balancer",
        nargs="+",
        choices=["random", "p2c", "least-latency"],
        default=["random"],
        help="how requests are spread over the replicas; several are compared on the same arrivals",
    )
    p.add_argument(
        "--http-cpu-ms",
        type=positive(float, zero=True),
        default=0.0,
        help="CPU ms each replica's event loop spends per request before the model (0: no HTTP stage)",
    )
    p.add_argument(
        "--cores",
        type=positive(float),
        help="the machine's cores, shared by all replicas' loops and model threads (default: no CPU contention)",
    )
    p.add_argument(
        "--loads",
        type=float,
        nargs="+",
        help="offered loads, requests/s over all replicas "
        "(default: 0.1x to 5x the replicas' capacity on the most accurate variant)",
    )
    p.add_argument(
        "--budgets",
        type=_budgets,
        help="latency budgets MS[:WEIGHT],... (default: 2x, 4x and 10x the "
        "most accurate variant's p99, weights 0.3/0.5/0.2)",
    )
    p.add_argument(
        "--policies",
        nargs="+",
        choices=["adaptive", "full", "fastest", "static"],
        default=["adaptive", "full", "fastest", "static"],
        help="routings to compare",
    )
    p.add_argument(
        "--arrivals", nargs="+", choices=["poisson", "bursty"], default=["poisson", "bursty"], help="arrival patterns"
    )
    p.add_argument(
        "--duration",
        type=float,
        help="simulated seconds per load (default: 30, fewer above ~7k requests/s, to keep ~200k requests per load)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds arrivals, budgets and service times")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    p.add_argument("--markdown", type=Path, help="write the table and target checks as Markdown here")
    p.add_argument("--plot", type=Path, help="plot SLO attainment and served metric against load (PNG) here")


def _bench_policy(args: argparse.Namespace) -> int:
    from loadtest.bench_policy import run

    return run(args.repo, decisions=args.decisions)


def add_bench_policy(commands) -> None:
    p = command(
        commands,
        "measure",
        "bench-policy",
        "time one routing decision on the repository's profiles",
        "flexserve bench-policy --decisions 20000",
        _bench_policy,
    )
    repo_option(p)
    p.add_argument("--decisions", type=int, default=20_000, help="routing decisions timed per family")


def _bench_server(args: argparse.Namespace) -> int:
    """bench-gateway and bench-triton: the same options, each its own module."""
    import importlib

    run = importlib.import_module(args.bench_module).run
    return run(
        args.repo,
        rounds=args.rounds,
        concurrency=args.concurrency,
        seconds=args.seconds,
        json_out=args.json,
        markdown_out=args.markdown,
    )


def add_server_benches(commands) -> None:
    for name, module, rounds, seconds, summary in (
        (
            "bench-gateway",
            "loadtest.bench_gateway",
            300,
            10.0,
            "the gateway's overhead against a bare BentoML echo, and its throughput, on real `bentoml serve`",
        ),
        (
            "bench-triton",
            "loadtest.bench_triton",
            200,
            5.0,
            "Triton's per-request cost over HTTP and gRPC against in-process ONNX Runtime, and failover",
        ),
    ):
        p = command(commands, "measure", name, summary, f"flexserve {name} --json reports/{name}.json", _bench_server)
        repo_option(p)
        p.add_argument("--rounds", type=int, default=rounds, help="requests per family (and way) at concurrency 1")
        p.add_argument("--concurrency", type=int, default=8, help="client threads in the throughput run")
        p.add_argument("--seconds", type=float, default=seconds, help="throughput run per family")
        p.add_argument("--json", type=Path, help="write the results as JSON here")
        p.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
        p.set_defaults(bench_module=module)


def _bench_routing(args: argparse.Namespace) -> int:
    from loadtest.bench_routing import run

    return run(
        args.repo,
        family=args.family,
        rates=args.loads,
        seconds=args.seconds,
        out=args.out,
        classes=args.sla,
        repeats=args.repeats,
        min_requests=args.min_requests,
    )


def add_bench_routing(commands) -> None:
    from loadtest.sla import DEFAULT_CLASSES

    p = command(
        commands,
        "measure",
        "bench-routing",
        "adaptive routing against pinned full and fastest on the real gateway, past saturation",
        "flexserve bench-routing --family recsys --loads 15 30 60 --repeats 3",
        _bench_routing,
    )
    repo_option(p)
    p.add_argument("--family", choices=BUILT_IN_FAMILIES, default="recsys", help="the family to load")
    p.add_argument(
        "--loads",
        type=float,
        nargs="+",
        help="offered loads, req/s (default: 0.1x-1.2x an estimate of what the most accurate variant sustains)",
    )
    p.add_argument("--seconds", type=float, default=6.0, help="per load step, at least")
    p.add_argument("--repeats", type=int, default=3, help="steps per routing and load; numbers are their median")
    p.add_argument("--min-requests", type=int, default=300, help="a step lasts long enough to send this many")
    p.add_argument("--sla", default=DEFAULT_CLASSES, help="SLA classes as name=budget_ms:weight,...")
    p.add_argument("--out", type=Path, default=Path("reports/bench_routing"), help="report.md, rows.json and the plot")


def _bench_scale(args: argparse.Namespace) -> int:
    from loadtest.bench_scale import run

    return run(
        args.repo,
        families=args.family,
        servers=args.servers,
        repeats=args.repeats,
        seconds=args.seconds,
        classes=args.sla,
        out=args.out,
        saved=args.from_json,
    )


def add_bench_scale(commands) -> None:
    p = command(
        commands,
        "measure",
        "bench-scale",
        "goodput at >= 99% SLO: 1 vs 2 gateway workers, Ray Serve replicas, their echo floors, Triton",
        "flexserve bench-scale --family rnn cnn --repeats 2",
        _bench_scale,
    )
    repo_option(p)
    p.add_argument("--family", nargs="+", choices=BUILT_IN_FAMILIES, help="default: rnn (every server) and cnn")
    p.add_argument(
        "--servers",
        nargs="+",
        metavar="SERVER",
        help="a subset of loadtest/bench_scale.py's SERVERS, e.g. 'gateway x1' 'gateway x2' 'ray x2'",
    )
    p.add_argument("--repeats", type=int, default=2, help="goodput searches per server; the median is reported")
    p.add_argument("--seconds", type=float, default=3.0, help="per load step, at least")
    p.add_argument("--sla", help="SLA classes as name=budget_ms:weight,... (default: standard=50:0.7,batch=200:0.3)")
    p.add_argument(
        "--out", type=Path, default=Path("reports/bench_scale"), help="report.md, bench_scale.json, the plot"
    )
    p.add_argument("--from-json", type=Path, help="no measuring: the report again from a saved bench_scale.json's runs")


def _bench_byom(args: argparse.Namespace) -> int:
    from loadtest.bench_byom import run

    return run(
        args.repo,
        args.out,
        imports=args.imports,
        cpu_rounds=args.cpu_rounds,
        cpu_seconds=args.cpu_seconds,
        swap_runs=args.swap_runs,
        swap_seconds=args.swap_seconds,
        swap_every_s=args.swap_every,
    )


def add_bench_byom(commands) -> None:
    p = command(
        commands,
        "measure",
        "bench-byom",
        "bring your own model: import time, v2 against friendly CPU per request, swaps under load",
        "flexserve bench-byom --swap-runs 3",
        _bench_byom,
    )
    repo_option(p, "the repository to copy (its families are measured too; left untouched)")
    p.add_argument("--imports", type=int, default=3, help="timed imports of the ~5 MB demo model (at least 2)")
    p.add_argument("--cpu-rounds", type=int, default=4, help="rounds per endpoint and family, alternating")
    p.add_argument("--cpu-seconds", type=float, default=3.0, help="closed-loop seconds per round")
    p.add_argument("--swap-runs", type=int, default=3, help="open-loop runs with swaps")
    p.add_argument("--swap-seconds", type=float, default=30.0, help="seconds per run")
    p.add_argument("--swap-every", type=float, default=3.0, help="seconds between swaps")
    p.add_argument("--out", type=Path, default=Path("reports/bench_byom"), help="report.md, rows.json and swap.png")


def _bench_coldstart(args: argparse.Namespace) -> int:
    from loadtest.bench_coldstart import run

    return run(
        args.repo,
        list(range(args.seed, args.seed + args.seeds)),
        args.steps,
        args.rounds,
        args.per_round,
        args.variant,
        args.out,
        skip_accuracy=args.latency_only,
    )


def add_bench_coldstart(commands) -> None:
    p = command(
        commands,
        "measure",
        "bench-coldstart",
        "recommender cold start: query RMSE against k for item mean, ordinary and meta-learned fits; fit latency",
        "flexserve bench-coldstart --seeds 5",
        _bench_coldstart,
    )
    repo_option(p, "the repository whose gateway the latency part runs (a recsys build)")
    p.add_argument("--seeds", type=int, default=5, help="MovieLens splits (each its own held-out users) to train")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--steps", type=int, default=600, help="meta-training steps per seed and protocol")
    p.add_argument("--rounds", type=int, default=10, help="latency rounds, alternating known and new users")
    p.add_argument("--per-round", type=int, default=50, help="requests per round and kind of user")
    p.add_argument("--variant", default="recsys_full_fp32", help="the variant every latency request is pinned to")
    p.add_argument("--latency-only", action="store_true", help="skip the accuracy part (it trains a model per seed)")
    p.add_argument(
        "--out", type=Path, default=Path("reports/bench_coldstart"), help="report.md, rows.json, coldstart.png"
    )


def _bench_federated(args: argparse.Namespace) -> int:
    from loadtest.bench_federated import run

    return run(list(range(args.seed, args.seed + args.seeds)), federated_settings(args), args.out)


def add_bench_federated(commands) -> None:
    p = command(
        commands,
        "measure",
        "bench-federated",
        "the recommender trained federated (Flower) against centrally, on the same split, over seeds",
        "flexserve bench-federated --seeds 3",
        _bench_federated,
    )
    p.add_argument("--seeds", type=int, default=3, help="MovieLens splits to train on, both ways")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    federated_options(p)
    p.add_argument(
        "--out", type=Path, default=Path("reports/bench_federated"), help="report.md, rows.json, federated.png"
    )
