"""The `flexserve` command line.

The one module that reaches both halves: each command imports its own code when it runs, so
`flexserve simulate` never loads torch and `flexserve train` never loads the serving side.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtest.sla import DEFAULT_CLASSES  # pure: no Locust, no HTTP
from serving.errors import FlexServeError

DEFAULT_REPO = Path("artifacts/model_repository")


def _train(args: argparse.Namespace) -> int:
    from training.pipeline import FAMILIES, BuildConfig, build

    families = list(FAMILIES) if args.family == "all" else [args.family]
    config = BuildConfig(out=args.out, checkpoints=args.checkpoints, quick=args.quick, synthetic=args.synthetic,
                         seed=args.seed, device=args.device, register=not args.no_register)
    manifest = build(families, config)
    for family in families:
        section = manifest["families"][family]
        for variant in section["variants"]:
            print(f"{variant['name']:<26} {section['metric']} {variant['metrics'][section['metric']]:.4f}  "
                  f"params {variant['params']:>9,}  {variant['size_bytes'] / 1e6:7.2f} MB")
    return 0


def _report(args: argparse.Namespace) -> int:
    from training.report import report

    return report(args.repo, markdown=args.markdown, plot=args.plot, json_out=args.json, rounds=args.rounds)


def _profile(args: argparse.Namespace) -> int:
    from training.profile import ProfileSettings, profile

    families = None if args.family == "all" else [args.family]
    settings = ProfileSettings(device=args.device, threads=args.threads, min_runs=args.min_runs,
                               seconds_per_point=args.seconds)
    manifest = profile(args.repo, settings, families, missing_only=args.missing_only, register=args.register)
    for family in families or manifest["families"]:
        for variant in manifest["families"][family]["variants"]:
            cells = "  ".join(f"b{b}: {s['p50']:.3f}/{s['p95']:.3f}/{s['p99']:.3f}"
                              for b, s in variant["latency_ms"].items())
            print(f"{variant['name']:<26} p50/p95/p99 ms  {cells}")
    return 0


def _budgets(text: str) -> tuple[tuple[float, float], ...]:
    """`5:0.3,20:0.5,200:0.2` -> ((5, 0.3), ...); a budget without `:weight` weighs 1."""
    out = []
    for item in text.split(","):
        budget, _, weight = item.partition(":")
        try:
            out.append((float(budget), float(weight) if weight else 1.0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected MS or MS:WEIGHT, e.g. 5:0.3,20:0.5,200:0.2")
    if any(b <= 0 or w <= 0 for b, w in out):
        raise argparse.ArgumentTypeError("budgets and weights must be > 0")
    return tuple(out)


def _simulate(args: argparse.Namespace) -> int:
    import json

    from serving import simulator
    from serving.repository import load_repository

    repo = load_repository(args.repo, verify=False)
    families = repo.families if args.family == "all" else [args.family]
    rows = []
    for family in families:
        rows += simulator.sweep(family, repo.family(family), replicas=args.replicas, workers=args.workers,
                                loads=args.loads, budgets=args.budgets, policies=args.policies,
                                arrivals=args.arrivals, duration_s=args.duration, seed=args.seed,
                                progress=simulator.progress_line)
    checks = simulator.targets(rows)
    text = simulator.markdown(rows, checks)
    print(text)
    for path, content in ((args.json, lambda: json.dumps(rows, indent=1)), (args.markdown, lambda: text + "\n")):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content())
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        simulator.plot(rows, args.plot)
    return 0


def _bench_policy(args: argparse.Namespace) -> int:
    from serving.policy_bench import decision_overhead
    from serving.repository import load_repository

    repo = load_repository(args.repo, verify=False)
    worst = 0.0
    for family in repo.families:
        result = decision_overhead(family, repo.family(family), decisions=args.decisions)
        worst = max(worst, result["median_us"])
        print(f"{family:<7} route() over {result['decisions']:,} decisions: median {result['median_us']:.2f} us, "
              f"p99 {result['p99_us']:.2f} us; finish() median {result['finish_median_us']:.2f} us")
    print(f"target: median <= 20 us per decision: {'PASS' if worst <= 20 else 'FAIL'} (worst family {worst:.2f} us)")
    return 0


def _bench_server(args: argparse.Namespace) -> int:
    """bench-gateway and bench-triton: the same options, each its own module."""
    import importlib

    run = importlib.import_module(args.bench_module).run
    return run(args.repo, rounds=args.rounds, concurrency=args.concurrency, seconds=args.seconds,
               json_out=args.json, markdown_out=args.markdown)


def _loadtest(args: argparse.Namespace) -> int:
    from loadtest.run import run

    return run(args.host, users=args.users, spawn_rate=args.spawn_rate, duration=args.duration, out=args.out,
               sla=args.sla, sla_file=args.sla_file, routing=args.routing, user_classes=args.user_classes)


def _bench_routing(args: argparse.Namespace) -> int:
    from loadtest.bench_routing import run

    return run(args.repo, family=args.family, rates=args.loads, seconds=args.seconds, out=args.out, classes=args.sla,
               repeats=args.repeats, min_requests=args.min_requests)


def _triton(args: argparse.Namespace) -> int:
    from serving.triton import cli

    if args.triton_command == "repo":
        return cli.repo(args.repo, args.out, args.flavour)
    return cli.up(args.repo, args.http_port, args.grpc_port, args.metrics_port, args.log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train every variant and write the model repository")
    train.add_argument("--family", choices=["cnn", "rnn", "recsys", "all"], default="all")
    train.add_argument("--quick", action="store_true", help="small subsets and few epochs (~2 minutes for all)")
    train.add_argument("--out", type=Path, default=DEFAULT_REPO, help=f"model repository (default {DEFAULT_REPO})")
    train.add_argument("--checkpoints", type=Path, default=None, help="PyTorch checkpoints (default: beside --out)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--synthetic", action="store_true", help="generated data instead of the real datasets")
    train.add_argument("--no-register", action="store_true", help="skip the BentoML model store")
    train.set_defaults(func=_train)

    report = commands.add_parser("report", help="variant table: test metric, size, ORT CPU latency; target checks")
    report.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    report.add_argument("--markdown", type=Path, help="also write the tables as Markdown")
    report.add_argument("--plot", type=Path, help="also plot accuracy against latency (PNG)")
    report.add_argument("--json", type=Path, help="also write the rows as JSON")
    report.add_argument("--rounds", type=int, default=40, help="timed runs per variant and batch size")
    report.set_defaults(func=_report)

    prof = commands.add_parser("profile", help="measure p50/p95/p99 per variant and batch size into the manifest")
    prof.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    prof.add_argument("--family", choices=["cnn", "rnn", "recsys", "all"], default="all")
    prof.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    prof.add_argument("--threads", type=int, default=1, help="intra-op threads per request, as serving runs them")
    prof.add_argument("--min-runs", type=int, default=30, help="timed runs per variant and batch size, at least")
    prof.add_argument("--seconds", type=float, default=0.25, help="time slice per variant and batch size")
    prof.add_argument("--missing-only", action="store_true", help="only families with unprofiled variants")
    prof.add_argument("--register", action="store_true", help="also store the profiled repository in the "
                      "BentoML model store (a new version of flexserve-model-repository)")
    prof.set_defaults(func=_profile)

    sim = commands.add_parser("simulate", help="discrete-event simulation of the routing policies on the profiles")
    sim.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    sim.add_argument("--family", choices=["cnn", "rnn", "recsys", "all"], default="all")
    sim.add_argument("--replicas", type=int, default=1, help="gateway replicas behind a random load balancer")
    sim.add_argument("--workers", type=int, default=2, help="concurrent requests per replica (one thread each)")
    sim.add_argument("--loads", type=float, nargs="+", help="offered loads, requests/s over all replicas "
                     "(default: 0.1x to 5x the replicas' capacity on the full model)")
    sim.add_argument("--budgets", type=_budgets, help="latency budgets MS[:WEIGHT],... (default: 2x, 4x and "
                     "10x the full model's p99, weights 0.3/0.5/0.2)")
    sim.add_argument("--policies", nargs="+", choices=["adaptive", "full", "fastest", "static"],
                     default=["adaptive", "full", "fastest", "static"])
    sim.add_argument("--arrivals", nargs="+", choices=["poisson", "bursty"], default=["poisson", "bursty"])
    sim.add_argument("--duration", type=float, help="simulated seconds per load (default: 30, fewer above "
                     "~7k requests/s, to keep ~200k requests per load)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--json", type=Path, help="write the rows as JSON")
    sim.add_argument("--markdown", type=Path, help="write the table and target checks as Markdown")
    sim.add_argument("--plot", type=Path, help="plot SLO attainment and served accuracy against load (PNG)")
    sim.set_defaults(func=_simulate)

    bench = commands.add_parser("bench-policy", help="time one routing decision on the repository's profiles")
    bench.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    bench.add_argument("--decisions", type=int, default=20_000)
    bench.set_defaults(func=_bench_policy)

    for name, module, rounds, seconds, help_text in (
            ("bench-gateway", "serving.bench_gateway", 300, 10.0,
             "gateway overhead vs a bare BentoML echo, and throughput, against real `bentoml serve` processes"),
            ("bench-triton", "serving.bench_triton", 200, 5.0,
             "Triton's per-request cost over HTTP and gRPC vs in-process ONNX Runtime, and failover")):
        bench = commands.add_parser(name, help=help_text)
        bench.add_argument("--repo", type=Path, default=DEFAULT_REPO)
        bench.add_argument("--rounds", type=int, default=rounds, help="requests per family (and way) at concurrency 1")
        bench.add_argument("--concurrency", type=int, default=8)
        bench.add_argument("--seconds", type=float, default=seconds, help="load per family at --concurrency")
        bench.add_argument("--json", type=Path)
        bench.add_argument("--markdown", type=Path)
        bench.set_defaults(func=_bench_server, bench_module=module)

    lt = commands.add_parser("loadtest", help="a headless Locust run against the gateway, with SLA checks")
    lt.add_argument("--host", default="http://127.0.0.1:3000")
    lt.add_argument("--users", type=int, default=8)
    lt.add_argument("--spawn-rate", type=float, default=4)
    lt.add_argument("--duration", default="60s", help="Locust's --run-time, e.g. 30s, 5m")
    lt.add_argument("--sla", help=f"SLA classes NAME=BUDGET_MS[:WEIGHT],... (default {DEFAULT_CLASSES})")
    lt.add_argument("--sla-file", type=Path, help="SLA classes and thresholds as JSON (see loadtest/sla.example.json)")
    lt.add_argument("--routing", choices=["adaptive", "full", "fastest"], default="adaptive")
    lt.add_argument("--out", type=Path, default=Path("reports/loadtest"))
    lt.add_argument("user_classes", nargs="*", help="ImageUser, TextUser, RecommendUser (default: all)")
    lt.set_defaults(func=_loadtest)

    br = commands.add_parser("bench-routing", help="adaptive vs pinned full vs pinned fastest on the real "
                             "gateway, stepped up past saturation, with plots and the simulator's prediction")
    br.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    br.add_argument("--family", choices=["cnn", "rnn", "recsys"], default="recsys")
    br.add_argument("--loads", type=float, nargs="+", help="offered loads, req/s (default: 0.1x-1.2x an estimate "
                    "of what the most accurate variant sustains)")
    br.add_argument("--seconds", type=float, default=6.0, help="per load step")
    br.add_argument("--repeats", type=int, default=3, help="steps per routing and load; numbers are their median")
    br.add_argument("--min-requests", type=int, default=300, help="a step lasts long enough to send this many")
    br.add_argument("--sla", default=DEFAULT_CLASSES, help="SLA classes as name=budget_ms:weight,... "
                    "(default: the load tests', %(default)s)")
    br.add_argument("--out", type=Path, default=Path("reports/bench_routing"))
    br.set_defaults(func=_bench_routing)

    triton = commands.add_parser("triton", help="serve the variants on NVIDIA Triton (HTTP + gRPC)")
    triton_commands = triton.add_subparsers(dest="triton_command", required=True)
    t_repo = triton_commands.add_parser("repo", help="write a Triton model repository (variants + routers)")
    t_repo.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="the FlexServe model repository")
    t_repo.add_argument("--out", type=Path, required=True, help="the Triton model repository to write")
    t_repo.add_argument("--flavour", choices=["portable", "native"], default="portable",
                        help="portable: Python backend (the nvidia-pytriton server); native: onnxruntime_onnx (GPU images)")
    t_repo.set_defaults(func=_triton)
    t_up = triton_commands.add_parser("up", help="start the Triton server from the nvidia-pytriton wheel")
    t_up.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="the FlexServe model repository")
    t_up.add_argument("--http-port", type=int, default=8000)
    t_up.add_argument("--grpc-port", type=int, default=8001)
    t_up.add_argument("--metrics-port", type=int, default=8002)
    t_up.add_argument("--log", type=Path, help="Triton's log file (default: kept in memory, shown on failure)")
    t_up.set_defaults(func=_triton)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, FlexServeError) as error:
        print(f"flexserve {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
