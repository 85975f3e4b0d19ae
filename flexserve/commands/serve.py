"""Serve: `flexserve serve` (the BentoML gateway), `flexserve bento` (a self-contained bento),
`flexserve triton repo|up`."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from flexserve.commands import Formatter, command, repo_option


def _serve(args: argparse.Namespace) -> int:
    import serving
    from serving.policy import policy_from_manifest
    from serving.repository import load_repository

    env = dict(os.environ)
    for name, value in (("FLEXSERVE_WORKERS", args.workers), ("FLEXSERVE_PARALLELISM", args.parallelism)):
        if value is not None:
            env[name] = str(value)
    if args.engine == "ray":
        return _serve_ray(args, env)
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
    argv = [
        bentoml,
        "serve",
        "serving.service:FlexServe",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--working-dir",
        str(root),
    ]
    print(f"[serve] {' '.join(argv)}", file=sys.stderr, flush=True)
    os.execve(bentoml, argv, env)  # BentoML takes over this process: Ctrl-C and SIGTERM go straight to it


def add_serve(commands) -> None:
    p = command(
        commands,
        "serve",
        "serve",
        "serve every family over HTTP with the BentoML gateway, routed by each request's budget",
        "flexserve serve --repo artifacts/model_repository --port 3000",
        _serve,
    )
    repo_option(p)
    p.add_argument(
        "--model-tag", help="serve a BentoML model store tag instead of --repo, e.g. flexserve-model-repository:latest"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves other machines too)")
    p.add_argument("--port", type=int, default=3000, help="HTTP port")
    p.add_argument(
        "--workers",
        type=_positive,
        help="gateway processes, each with its own policies (FLEXSERVE_WORKERS; default: one per core with "
        "the in-process backend, one with Triton)",
    )
    p.add_argument(
        "--parallelism",
        type=_positive,
        help="concurrent model runs per process (FLEXSERVE_PARALLELISM; default: cores // workers)",
    )
    p.add_argument(
        "--engine",
        choices=["bentoml", "ray"],
        default="bentoml",
        help="bentoml: one machine, --workers processes; ray: Ray Serve replicas on one machine or a cluster",
    )
    ray = p.add_argument_group("Ray Serve (--engine ray)")
    ray.add_argument("--replicas", type=_positive, help="a fixed number of replicas (default: one per core)")
    ray.add_argument(
        "--autoscale", metavar="MIN:MAX", help="scale replicas between MIN and MAX on ongoing requests instead"
    )
    ray.add_argument(
        "--address",
        help="join this Ray cluster (`ray start --head` prints it, e.g. 10.0.0.1:6379); default: a local Ray",
    )
    ray.add_argument(
        "--grpc-port",
        type=int,
        help="also serve gRPC (serving/proto/flexserve.proto) through Ray Serve's gRPC proxy on this port; "
        "Ray binds it on every interface",
    )
    ray.add_argument(
        "--router",
        choices=["least-latency", "p2c"],
        default="least-latency",
        help="least-latency: the replica whose policy predicts the lowest latency; p2c: Ray's power of two choices",
    )


def _serve_ray(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Start (or join, with --address) Ray, run the FlexServe application on Ray Serve with its HTTP proxy
    on --host:--port (and gRPC on --grpc-port), stop on Ctrl-C or SIGTERM."""
    try:
        import ray
        from ray import serve
    except ImportError:
        print("the Ray engine needs Ray Serve: pip install -e '.[ray]'", file=sys.stderr)
        return 2
    from serving.policy import policy_from_manifest
    from serving.rayserve import APP_NAME, GRPC_SERVICER, LOGGING, deployment, parse_autoscale
    from serving.repository import load_repository

    if args.replicas and args.autoscale:
        print("--replicas and --autoscale: give one of them", file=sys.stderr)
        return 2
    try:
        autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if not args.model_tag:
        repo = load_repository(args.repo, verify=False)  # a missing repository or profile: a hint here
        for family in repo.families:
            policy_from_manifest(family, repo.family(family))
    os.environ.update(env)
    # "local": a Ray of its own, even where RAY_ADDRESS or a `ray start` on this machine would attach it
    ray.init(address=args.address or "local", include_dashboard=False, logging_level="WARNING")
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own; Ctrl-C also stops start-up
        signal.signal(sig, signal.default_int_handler)
    try:
        grpc = {"port": args.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]} if args.grpc_port else None
        serve.start(
            http_options={"host": args.host, "port": args.port},
            grpc_options=grpc,
            logging_config=LOGGING,  # no access log line per request (as `bentoml serve`'s default)
        )
        application = deployment(
            repo=None if args.model_tag else args.repo,
            model_tag=args.model_tag,
            replicas=args.replicas,
            autoscale=autoscale,
            parallelism=args.parallelism or 1,
            router=args.router,
            env=env,
        )
        serve.run(application, name=APP_NAME, route_prefix="/")
        grpc_line = f"  gRPC [::]:{args.grpc_port} (every interface)" if args.grpc_port else ""
        print(
            f"FlexServe on Ray Serve is ready: HTTP http://{args.host}:{args.port}{grpc_line}; "
            f"router {args.router}; Ctrl-C stops it",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if args.address:  # the cluster outlives this command: take this application off it
            serve.delete(APP_NAME)
        ray.shutdown()  # a local Ray (and Serve in it) stops with it
        print("[serve] stopped", file=sys.stderr, flush=True)
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _bento(args: argparse.Namespace) -> int:
    import subprocess

    import serving
    from contract.manifest import read_manifest
    from serving.policy import policy_from_manifest
    from serving.repository import load_repository
    from training.repository import register_in_bentoml

    repo = load_repository(args.repo)  # checked against its sha256s, as the bento will serve it
    for family in repo.families:
        policy_from_manifest(family, repo.family(family))  # profiled on this machine: a missing profile, a hint
    tag = register_in_bentoml(args.repo, read_manifest(args.repo))
    print(f"[bento] the model repository is in the BentoML model store as {tag}", file=sys.stderr, flush=True)
    root = Path(serving.__file__).resolve().parents[1]
    bentoml = str(Path(sys.executable).parent / "bentoml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    built = subprocess.run(
        [bentoml, "build", ".", "--output", "tag"], cwd=root, env=env, capture_output=True, text=True
    )
    if built.returncode != 0:
        print(built.stdout[-3000:] + built.stderr[-3000:], file=sys.stderr)
        return built.returncode
    bento = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(bento)
    print(
        f"[bento] built {bento} with {tag} inside: `bentoml serve {bento}` serves it from any directory, "
        f"`bentoml containerize {bento}` makes a Docker image",
        file=sys.stderr,
    )
    return 0


def add_bento(commands) -> None:
    p = command(
        commands,
        "serve",
        "bento",
        "build a self-contained bento: the gateway with the model repository inside (`bentoml serve flexserve:latest`)",
        "flexserve bento --repo artifacts/model_repository",
        _bento,
    )
    repo_option(p, "the profiled model repository to put in the bento")


def _triton_repo(args: argparse.Namespace) -> int:
    from serving.triton.repository import write_triton_repository

    names = write_triton_repository(args.repo, args.out, args.flavour)
    print(f"wrote {len(names)} Triton models ({args.flavour}) to {args.out}: {', '.join(names)}")
    return 0


def _triton_up(args: argparse.Namespace) -> int:
    """Write a portable Triton repository, start Triton on 127.0.0.1 with explicit model control, load
    each new FlexServe version through Triton's model-control API, stop on Ctrl-C or SIGTERM."""
    from contract.layout import live_dir
    from serving.triton.repository import write_triton_repository
    from serving.triton.server import Ports, TritonServer

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="flexserve-triton-repo-") as workdir:
        models = Path(workdir) / "models"
        # Read before writing: a version that goes live meanwhile is then loaded by the watch below.
        served, failed = live_dir(args.repo).resolve(), None
        names = write_triton_repository(args.repo, models, "portable")
        print(f"[triton] starting Triton with {len(names)} models from {args.repo} ...", file=sys.stderr, flush=True)
        server = TritonServer(
            models, Ports(args.http_port, args.grpc_port, args.metrics_port), log=args.log, explicit=True
        )
        server.start()
        loaded = {name: (models / name / "config.pbtxt").read_text() for name in names}  # what Triton runs
        try:
            routers = ", ".join(n for n in names if n.endswith("_router"))
            print(
                f"Triton is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}\n"
                f"routers: {routers}; Ctrl-C stops it",
                flush=True,
            )
            while not stop.wait(0.5):
                live = live_dir(args.repo).resolve()
                if live not in (served, failed):  # a new FlexServe version went live
                    try:
                        changed = _reload_triton(server, args.repo, models, loaded)
                        served, failed = live, None
                        print(
                            f"[triton] serving version {live.name}: {len(changed)} of {len(loaded)} "
                            f"models (re)loaded: {', '.join(changed) or 'none'}",
                            file=sys.stderr,
                            flush=True,
                        )
                    except Exception as error:  # a broken version: Triton keeps serving what it has
                        failed = live  # not tried again until another version goes live
                        print(f"[triton] version {live.name} could not be loaded: {error}", file=sys.stderr, flush=True)
                if server.process.poll() is not None:
                    print(
                        f"[triton] the server exited with {server.process.returncode}:\n{server.log_tail()}",
                        file=sys.stderr,
                    )
                    return 1
        finally:
            server.stop()
            print("[triton] stopped", file=sys.stderr, flush=True)
    return 0


def _reload_triton(server, repo: Path, models: Path, loaded: dict[str, str]) -> list[str]:
    """Write the live version's Triton models over the old ones; load the new and changed ones (a
    portable config names its ONNX file's sha256 and the router's its version, so a changed config is
    a changed model), unload and remove the ones it no longer has; return the models (re)loaded.
    `loaded` (each model Triton runs -> the config it was loaded with) is updated model by model, so
    it stays true when Triton refuses one (the refusal is raised)."""
    from serving.triton.repository import write_triton_repository

    fresh = write_triton_repository(repo, models, "portable")
    configs = {name: (models / name / "config.pbtxt").read_text() for name in fresh}
    changed = [name for name in fresh if loaded.get(name) != configs[name]]
    for name in sorted(changed, key=lambda n: n.endswith("_router")):  # variants before the routers calling them
        server.load([name])
        loaded[name] = configs[name]
    gone = sorted(set(loaded) - set(fresh))
    server.unload(gone)
    for name in gone:
        loaded.pop(name)
        shutil.rmtree(models / name, ignore_errors=True)
    return changed


def add_triton(commands) -> None:
    p = command(
        commands,
        "serve",
        "triton",
        "serve the variants on NVIDIA Triton (HTTP and gRPC), with a budget-routing model per family",
        "flexserve triton up --grpc-port 8001",
        lambda _: 0,
    )
    sub = p.add_subparsers(dest="triton_command", required=True, metavar="{repo,up}")
    repo = sub.add_parser(
        "repo",
        prog="flexserve triton repo",
        help="write a Triton model repository (variants + routers)",
        description="write a Triton model repository (variants + routers)",
        epilog="example:\n  flexserve triton repo --flavour native --out triton_models",
        formatter_class=Formatter,
    )
    repo_option(repo)
    repo.add_argument("--out", type=Path, required=True, help="the Triton model repository to write")
    repo.add_argument(
        "--flavour",
        choices=["portable", "native"],
        default="portable",
        help="portable: Python backend (the nvidia-pytriton server); native: onnxruntime_onnx (GPU images)",
    )
    repo.set_defaults(func=_triton_repo)
    up = sub.add_parser(
        "up",
        prog="flexserve triton up",
        help="start the Triton server from the nvidia-pytriton wheel on 127.0.0.1",
        description="start the Triton server from the nvidia-pytriton wheel on 127.0.0.1",
        epilog="example:\n  flexserve triton up --http-port 8000 --grpc-port 8001",
        formatter_class=Formatter,
    )
    repo_option(up)
    up.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP port")
    up.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC port")
    up.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics port")
    up.add_argument("--log", type=Path, help="Triton's log file (default: kept in memory, shown on failure)")
    up.set_defaults(func=_triton_up)
