"""The `flexserve` command line: one entry point for building, serving, measuring and load-testing.

Each command imports its own code when it runs, so `flexserve simulate` never loads torch and
`flexserve --help` starts in a fraction of a second. Errors a user can fix (a missing repository,
a bad option value) end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from contract.manifest import DEFAULT_REPOSITORY, ManifestError
from flexserve import __version__
from serving.errors import FlexServeError
from training import BUILT_IN_FAMILIES

GROUPS: dict[str, list[tuple[str, str]]] = {}  # help section -> [(command, one line)], in order


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows every option's default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if "%(default)" not in help_text and action.option_strings and not hidden:
            if not isinstance(default, (list, tuple)) or default:
                help_text += " (default: %(default)s)"
        return help_text


def _command(commands, group: str, name: str, summary: str, example: str, run: Callable) -> argparse.ArgumentParser:
    GROUPS.setdefault(group, []).append((name, summary))
    parser = commands.add_parser(name, prog=f"flexserve {name}", description=summary, epilog=f"example:\n  {example}",
                                 formatter_class=_Formatter)
    parser.set_defaults(func=run)
    return parser


def _repo_option(parser: argparse.ArgumentParser, help_text: str = "the FlexServe model repository") -> None:
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPOSITORY, help=help_text)


# -- build ------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from training.pipeline import BuildConfig, build

    families = list(BUILT_IN_FAMILIES) if args.family == "all" else [args.family]
    config = BuildConfig(out=args.out, checkpoints=args.checkpoints, quick=args.quick, synthetic=args.synthetic,
                         seed=args.seed, device=args.device, register=not args.no_register)
    manifest = build(families, config)
    for family in families:
        section = manifest.families[family]
        for variant in section.variants:
            print(f"{variant.name:<26} {section.metric} {variant.metrics[section.metric]:.4f}  "
                  f"params {variant.params:>9,}  {variant.size_bytes / 1e6:7.2f} MB")
    return 0


def _add_train(commands) -> None:
    p = _command(commands, "build the model repository", "train",
                 "train every variant (full, distilled; fp32, fp16, int8) and write the model repository",
                 "flexserve train --quick --family rnn", _train)
    p.add_argument("--family", choices=[*BUILT_IN_FAMILIES, "all"], default="all", help="which family to train")
    p.add_argument("--quick", action="store_true", help="small subsets and few epochs (~2 minutes for all)")
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY, help="the model repository to write")
    p.add_argument("--checkpoints", type=Path, help="where PyTorch checkpoints go (default: beside --out)")
    p.add_argument("--seed", type=int, default=0, help="seeds data splits, initial weights and shuffling")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    p.add_argument("--synthetic", action="store_true", help="generated data instead of the real datasets")
    p.add_argument("--no-register", action="store_true", help="skip copying it into BentoML's model store")


def _report(args: argparse.Namespace) -> int:
    from training.report import report

    return report(args.repo, markdown=args.markdown, plot=args.plot, json_out=args.json, rounds=args.rounds)


def _add_report(commands) -> None:
    p = _command(commands, "build the model repository", "report",
                 "the variant table (test metric, size, ONNX Runtime CPU latency) and its targets",
                 "flexserve report --markdown reports/variants.md --plot reports/variants.png", _report)
    _repo_option(p)
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    p.add_argument("--plot", type=Path, help="also plot accuracy against latency (PNG) here")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--rounds", type=int, default=40, help="timed runs per variant and batch size")


# -- serve ------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    import serving
    from serving.policy import policy_from_manifest
    from serving.repository import load_repository

    env = dict(os.environ)
    if args.model_tag:
        env["FLEXSERVE_MODEL_TAG"] = args.model_tag
    else:
        repo = load_repository(args.repo, verify=False)  # a missing repository: a hint here, not a server traceback
        for family in repo.families:
            policy_from_manifest(family, repo.family(family))  # and so are missing profiles
        env["FLEXSERVE_REPO"] = str(args.repo.resolve())
        env.pop("FLEXSERVE_MODEL_TAG", None)
    root = Path(serving.__file__).resolve().parents[1]
    bentoml = str(Path(sys.executable).parent / "bentoml")
    command = [bentoml, "serve", "serving.service:FlexServe", "--host", args.host, "--port", str(args.port),
               "--working-dir", str(root)]
    print(f"[serve] {' '.join(command)}", file=sys.stderr, flush=True)
    os.execve(bentoml, command, env)  # BentoML takes over this process: Ctrl-C and SIGTERM go straight to it


def _add_serve(commands) -> None:
    p = _command(commands, "serve", "serve",
                 "serve every family over HTTP with the BentoML gateway, routed by each request's budget",
                 "flexserve serve --repo artifacts/model_repository --port 3000", _serve)
    _repo_option(p)
    p.add_argument("--model-tag", help="serve a BentoML model store tag instead of --repo, e.g. "
                   "flexserve-model-repository:latest")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves other machines too)")
    p.add_argument("--port", type=int, default=3000, help="HTTP port")


def _triton_repo(args: argparse.Namespace) -> int:
    from serving.triton.repository import write_triton_repository

    names = write_triton_repository(args.repo, args.out, args.flavour)
    print(f"wrote {len(names)} Triton models ({args.flavour}) to {args.out}: {', '.join(names)}")
    return 0


def _triton_up(args: argparse.Namespace) -> int:
    """Write a portable Triton repository, start Triton on 127.0.0.1, wait for Ctrl-C or SIGTERM."""
    from serving.triton.repository import write_triton_repository
    from serving.triton.server import Ports, TritonServer

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="flexserve-triton-repo-") as workdir:
        models = Path(workdir) / "models"
        names = write_triton_repository(args.repo, models, "portable")
        print(f"[triton] starting Triton with {len(names)} models from {args.repo} ...", file=sys.stderr, flush=True)
        server = TritonServer(models, Ports(args.http_port, args.grpc_port, args.metrics_port), log=args.log)
        server.start()
        try:
            routers = ", ".join(n for n in names if n.endswith("_router"))
            print(f"Triton is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}\n"
                  f"routers: {routers}; Ctrl-C stops it", flush=True)
            while not stop.wait(0.5):
                if server.process.poll() is not None:
                    print(f"[triton] the server exited with {server.process.returncode}:\n{server.log_tail()}",
                          file=sys.stderr)
                    return 1
        finally:
            server.stop()
            print("[triton] stopped", file=sys.stderr, flush=True)
    return 0


def _add_triton(commands) -> None:
    p = _command(commands, "serve", "triton", "serve the variants on NVIDIA Triton (HTTP and gRPC), with a "
                 "budget-routing model per family", "flexserve triton up --grpc-port 8001", lambda _: 0)
    sub = p.add_subparsers(dest="triton_command", required=True, metavar="{repo,up}")
    repo = sub.add_parser("repo", prog="flexserve triton repo", help="write a Triton model repository (variants + routers)",
                          description="write a Triton model repository (variants + routers)",
                          epilog="example:\n  flexserve triton repo --flavour native --out triton_models",
                          formatter_class=_Formatter)
    _repo_option(repo)
    repo.add_argument("--out", type=Path, required=True, help="the Triton model repository to write")
    repo.add_argument("--flavour", choices=["portable", "native"], default="portable",
                      help="portable: Python backend (the nvidia-pytriton server); native: onnxruntime_onnx (GPU images)")
    repo.set_defaults(func=_triton_repo)
    up = sub.add_parser("up", prog="flexserve triton up", help="start the Triton server from the nvidia-pytriton wheel on 127.0.0.1",
                        description="start the Triton server from the nvidia-pytriton wheel on 127.0.0.1",
                        epilog="example:\n  flexserve triton up --http-port 8000 --grpc-port 8001",
                        formatter_class=_Formatter)
    _repo_option(up)
    up.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP port")
    up.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC port")
    up.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics port")
    up.add_argument("--log", type=Path, help="Triton's log file (default: kept in memory, shown on failure)")
    up.set_defaults(func=_triton_up)


# -- measure ----------------------------------------------------------------------------------
def _profile(args: argparse.Namespace) -> int:
    from training.profile import ProfileSettings, profile

    families = None if args.family == "all" else [args.family]
    settings = ProfileSettings(device=args.device, threads=args.threads, min_runs=args.min_runs,
                               seconds_per_point=args.seconds)
    manifest = profile(args.repo, settings, families, missing_only=args.missing_only, register=args.register)
    for family in families or manifest.families:
        for variant in manifest.families[family].variants:
            cells = "  ".join(f"b{b}: {s['p50']:.3f}/{s['p95']:.3f}/{s['p99']:.3f}"
                              for b, s in (variant.latency_ms or {}).items())
            print(f"{variant.name:<26} p50/p95/p99 ms  {cells}")
    return 0


def _add_profile(commands) -> None:
    p = _command(commands, "measure", "profile",
                 "measure p50/p95/p99 per variant and batch size on this machine, into the manifest",
                 "flexserve profile --missing-only", _profile)
    _repo_option(p)
    p.add_argument("--family", default="all", help="one family of the repository, or all")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime's execution provider")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per request, as serving runs them")
    p.add_argument("--min-runs", type=int, default=30, help="timed runs per variant and batch size, at least")
    p.add_argument("--seconds", type=float, default=0.25, help="time slice per variant and batch size")
    p.add_argument("--missing-only", action="store_true", help="only families with unprofiled variants")
    p.add_argument("--register", action="store_true", help="also store the profiled repository in BentoML's "
                   "model store (a new version of flexserve-model-repository)")


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
        rows += simulator.sweep(family, repo.family(family), replicas=args.replicas, workers=args.workers,
                                loads=args.loads, budgets=args.budgets, policies=args.policies,
                                arrivals=args.arrivals, duration_s=args.duration, seed=args.seed)
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


def _add_simulate(commands) -> None:
    p = _command(commands, "measure", "simulate",
                 "discrete-event simulation of the routing policies on the measured profiles",
                 "flexserve simulate --family cnn --replicas 64 --loads 50000 --duration 60", _simulate)
    _repo_option(p)
    p.add_argument("--family", default="all", help="one family of the repository, or all")
    p.add_argument("--replicas", type=int, default=1, help="gateway replicas behind a random load balancer")
    p.add_argument("--workers", type=int, default=2, help="concurrent requests per replica (one thread each)")
    p.add_argument("--loads", type=float, nargs="+", help="offered loads, requests/s over all replicas "
                   "(default: 0.1x to 5x the replicas' capacity on the most accurate variant)")
    p.add_argument("--budgets", type=_budgets, help="latency budgets MS[:WEIGHT],... (default: 2x, 4x and 10x the "
                   "most accurate variant's p99, weights 0.3/0.5/0.2)")
    p.add_argument("--policies", nargs="+", choices=["adaptive", "full", "fastest", "static"],
                   default=["adaptive", "full", "fastest", "static"], help="routings to compare")
    p.add_argument("--arrivals", nargs="+", choices=["poisson", "bursty"], default=["poisson", "bursty"],
                   help="arrival patterns")
    p.add_argument("--duration", type=float, help="simulated seconds per load (default: 30, fewer above "
                   "~7k requests/s, to keep ~200k requests per load)")
    p.add_argument("--seed", type=int, default=0, help="seeds arrivals, budgets and service times")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    p.add_argument("--markdown", type=Path, help="write the table and target checks as Markdown here")
    p.add_argument("--plot", type=Path, help="plot SLO attainment and served metric against load (PNG) here")


def _bench_policy(args: argparse.Namespace) -> int:
    from loadtest.bench_policy import run

    return run(args.repo, decisions=args.decisions)


def _add_bench_policy(commands) -> None:
    p = _command(commands, "measure", "bench-policy", "time one routing decision on the repository's profiles",
                 "flexserve bench-policy --decisions 20000", _bench_policy)
    _repo_option(p)
    p.add_argument("--decisions", type=int, default=20_000, help="routing decisions timed per family")


def _bench_server(args: argparse.Namespace) -> int:
    """bench-gateway and bench-triton: the same options, each its own module."""
    import importlib

    run = importlib.import_module(args.bench_module).run
    return run(args.repo, rounds=args.rounds, concurrency=args.concurrency, seconds=args.seconds,
               json_out=args.json, markdown_out=args.markdown)


def _add_server_benches(commands) -> None:
    for name, module, rounds, seconds, summary in (
            ("bench-gateway", "loadtest.bench_gateway", 300, 10.0,
             "the gateway's overhead against a bare BentoML echo, and its throughput, on real `bentoml serve`"),
            ("bench-triton", "loadtest.bench_triton", 200, 5.0,
             "Triton's per-request cost over HTTP and gRPC against in-process ONNX Runtime, and failover")):
        p = _command(commands, "measure", name, summary, f"flexserve {name} --json reports/{name}.json", _bench_server)
        _repo_option(p)
        p.add_argument("--rounds", type=int, default=rounds, help="requests per family (and way) at concurrency 1")
        p.add_argument("--concurrency", type=int, default=8, help="client threads in the throughput run")
        p.add_argument("--seconds", type=float, default=seconds, help="throughput run per family")
        p.add_argument("--json", type=Path, help="write the results as JSON here")
        p.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
        p.set_defaults(bench_module=module)


def _bench_routing(args: argparse.Namespace) -> int:
    from loadtest.bench_routing import run

    return run(args.repo, family=args.family, rates=args.loads, seconds=args.seconds, out=args.out, classes=args.sla,
               repeats=args.repeats, min_requests=args.min_requests)


def _add_bench_routing(commands) -> None:
    from loadtest.sla import DEFAULT_CLASSES

    p = _command(commands, "measure", "bench-routing",
                 "adaptive routing against pinned full and fastest on the real gateway, past saturation",
                 "flexserve bench-routing --family recsys --loads 15 30 60 --repeats 3", _bench_routing)
    _repo_option(p)
    p.add_argument("--family", choices=BUILT_IN_FAMILIES, default="recsys", help="the family to load")
    p.add_argument("--loads", type=float, nargs="+", help="offered loads, req/s (default: 0.1x-1.2x an estimate "
                   "of what the most accurate variant sustains)")
    p.add_argument("--seconds", type=float, default=6.0, help="per load step, at least")
    p.add_argument("--repeats", type=int, default=3, help="steps per routing and load; numbers are their median")
    p.add_argument("--min-requests", type=int, default=300, help="a step lasts long enough to send this many")
    p.add_argument("--sla", default=DEFAULT_CLASSES, help="SLA classes as name=budget_ms:weight,...")
    p.add_argument("--out", type=Path, default=Path("reports/bench_routing"), help="report.md, rows.json and the plot")


# -- load test --------------------------------------------------------------------------------
def _loadtest(args: argparse.Namespace) -> int:
    from loadtest.run import run

    return run(args.host, users=args.users, spawn_rate=args.spawn_rate, duration=args.duration, out=args.out,
               sla=args.sla, sla_file=args.sla_file, routing=args.routing, user_classes=args.user_classes)


def _add_loadtest(commands) -> None:
    from loadtest.sla import DEFAULT_CLASSES

    p = _command(commands, "load test", "loadtest", "a headless Locust run against the gateway, with SLA checks",
                 "flexserve loadtest --host http://127.0.0.1:3000 --users 4 --duration 30s", _loadtest)
    p.add_argument("--host", default="http://127.0.0.1:3000", help="the gateway's URL")
    p.add_argument("--users", type=int, default=8, help="concurrent Locust users")
    p.add_argument("--spawn-rate", type=float, default=4, help="users started per second")
    p.add_argument("--duration", default="60s", help="Locust's --run-time, e.g. 30s, 5m")
    p.add_argument("--sla", default=DEFAULT_CLASSES, help="SLA classes NAME=BUDGET_MS[:WEIGHT],...")
    p.add_argument("--sla-file", type=Path, help="SLA classes and thresholds as JSON, instead of --sla "
                   "(see loadtest/sla.example.json)")
    p.add_argument("--routing", choices=["adaptive", "full", "fastest"], default="adaptive",
                   help="adaptive (the policy), or every request pinned to the most accurate / the fastest variant")
    p.add_argument("--out", type=Path, default=Path("reports/loadtest"), help="Locust's HTML and CSV, sla.json, "
                   "summary.md")
    p.add_argument("user_classes", nargs="*", help="ImageUser, TextUser, RecommendUser (default: all)")


COMMANDS = (_add_train, _add_report, _add_serve, _add_triton, _add_profile, _add_simulate, _add_bench_policy,
            _add_server_benches, _add_bench_routing, _add_loadtest)


def build_parser() -> argparse.ArgumentParser:
    GROUPS.clear()
    parser = argparse.ArgumentParser(prog="flexserve", usage="flexserve [-h] [--version] COMMAND ...",
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"flexserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS)
    for add in COMMANDS:
        add(commands)
    width = max(len(name) for entries in GROUPS.values() for name, _ in entries) + 2
    listing = "\n".join(f"{group}:\n" + "\n".join(f"  {name:<{width}}{summary}" for name, summary in entries) + "\n"
                        for group, entries in GROUPS.items())
    parser.description = ("FlexServe: train model variants, and serve each request with the most accurate one that "
                          f"fits its latency budget.\n\n{listing}")
    parser.epilog = "`flexserve COMMAND --help` shows a command's options, their defaults and an example."
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, FlexServeError, ManifestError) as error:
        print(f"flexserve {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
