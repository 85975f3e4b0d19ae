"""`flexserve triton repo` and `flexserve triton up`."""
from __future__ import annotations

import signal
import sys
import tempfile
import threading
from pathlib import Path

from serving.triton.repository import write_triton_repository
from serving.triton.server import Ports, TritonServer


def repo(source: Path, out: Path, flavour: str) -> int:
    names = write_triton_repository(source, out, flavour)
    print(f"wrote {len(names)} Triton models ({flavour}) to {out}: {', '.join(names)}")
    return 0


def up(source: Path, http_port: int, grpc_port: int, metrics_port: int, log: Path | None) -> int:
    """Write a portable Triton repository, start Triton on 127.0.0.1, wait for Ctrl-C or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="flexserve-triton-repo-") as workdir:
        models = Path(workdir) / "models"
        names = write_triton_repository(source, models, "portable")
        print(f"[triton] starting Triton with {len(names)} models from {source} ...", file=sys.stderr, flush=True)
        server = TritonServer(models, Ports(http_port, grpc_port, metrics_port), log=log)
        server.start()
        try:
            print(f"Triton is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}\n"
                  f"routers: {', '.join(n for n in names if n.endswith('_router'))}; Ctrl-C stops it", flush=True)
            while not stop.wait(0.5):
                if server.process.poll() is not None:
                    print(f"[triton] the server exited with {server.process.returncode}:\n{server.log_tail()}",
                          file=sys.stderr)
                    return 1
        finally:
            server.stop()
            print("[triton] stopped", file=sys.stderr, flush=True)
    return 0
