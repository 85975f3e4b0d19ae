"""`flexserve bench-triton`: what Triton costs per request, and what failover costs.

1. Per family, the most accurate variant on the same tensors, in one loop at concurrency 1
   (round-robin: noise hits all three alike) and then with 8 client threads each: in-process
   ONNX Runtime (one intra-op thread, as served), Triton over gRPC, Triton over HTTP (the
   portable flavour: the nvidia-pytriton server's Python backend running ONNX Runtime).
   Reported as p50 and throughput, and as ratios to in-process ONNX Runtime.
2. Failover: the gateway (Triton backend, gRPC) under load from 4 client threads; Triton is
   killed (SIGKILL) and restarted on the same ports. Reported: requests that failed (target 0),
   requests served in-process meanwhile, and the time from "Triton ready again" until traffic
   is back on it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from contract.dtypes import dtype
from contract.sessions import open_session
from loadtest.payloads import model_inputs, typical_requests
from serving.repository import load_repository
from serving.triton.repository import write_triton_repository
from serving.triton.server import TritonServer
from training.progress import Progress


def _caller(kind: str, server: TritonServer | None, repo, family: str, variant: str, feeds: dict):
    """A zero-argument function that runs one request the `kind` way (thread-local clients)."""
    if kind == "onnxruntime":
        sess = open_session(next(v.path for v in repo.variants(family) if v.name == variant))
        return lambda: sess.run(None, feeds)
    if kind == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(server.grpc_url)
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(server.http_url)
    inputs = []
    for name, value in feeds.items():
        value = value.reshape(-1, 1) if name == "LENGTHS" else value
        tensor = module.InferInput(name, list(value.shape), dtype(value.dtype).triton)
        tensor.set_data_from_numpy(np.ascontiguousarray(value))
        inputs.append(tensor)
    return lambda: client.infer(variant, inputs)


KINDS = ("onnxruntime", "grpc", "http")


def overhead(server: TritonServer, repo, rounds: int, concurrency: int, seconds: float) -> list[dict]:
    from serving.policy import policy_from_manifest

    rows = []
    requests = typical_requests(repo, np.random.default_rng(0))
    progress = Progress(len(requests), "bench-triton", unit="family")
    for family, (_, body) in requests.items():
        variant = policy_from_manifest(family, repo.family(family)).most_accurate
        feeds = model_inputs(repo, family, body)
        calls = {kind: _caller(kind, server, repo, family, variant, feeds) for kind in KINDS}
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for i in range(rounds + 10):
            for kind, call in calls.items():
                t0 = time.perf_counter()
                call()
                if i >= 10:
                    times[kind].append((time.perf_counter() - t0) * 1e3)
        row = {"family": family, "variant": variant}
        for kind in KINDS:
            row[f"{kind}_p50_ms"] = round(statistics.median(times[kind]), 3)
            row[f"{kind}_c{concurrency}_rps"] = _throughput(
                kind, server, repo, family, variant, feeds, concurrency, seconds
            )
        for kind in ("grpc", "http"):
            row[f"{kind}_vs_onnxruntime_c1"] = round(row[f"{kind}_p50_ms"] / row["onnxruntime_p50_ms"], 2)
            row[f"{kind}_vs_onnxruntime_c{concurrency}"] = round(
                row[f"onnxruntime_c{concurrency}_rps"] / max(row[f"{kind}_c{concurrency}_rps"], 1e-9), 2
            )
        rows.append(row)
        progress.update(1, note=family)
        progress.log(f"[bench-triton] {family}: " + ", ".join(f"{k} p50 {row[f'{k}_p50_ms']:.3f} ms" for k in KINDS))
    progress.close()
    return rows


def _throughput(kind, server, repo, family, variant, feeds, concurrency: int, seconds: float) -> float:
    counts = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        call = _caller(kind, server, repo, family, variant, feeds)
        while time.perf_counter() < stop_at:
            call()
            counts[slot] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(sum(counts) / (time.perf_counter() - started), 1)


def failover(models: Path, repo_path: Path, log_dir: Path, load_seconds: float = 3.0) -> dict:
    from serving.gateway import Gateway, GatewayConfig, RequestContext

    server = TritonServer(models, log=log_dir / "triton-failover.log").start()
    gateway = Gateway(
        GatewayConfig(repo=repo_path, parallelism=2, backend="triton", triton_url=f"127.0.0.1:{server.ports.grpc}")
    )
    served: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()
    image = np.zeros((28, 28)).tolist()

    def client() -> None:
        async def loop():
            while not stop.is_set():
                try:
                    answer, done = await gateway.infer(
                        "cnn", {"images": [image]}, RequestContext(latency_budget_ms=10_000)
                    )
                    done()
                    served.append((time.monotonic(), answer["backend"]))
                except Exception as error:
                    failures.append(repr(error))

        asyncio.run(loop())

    threads = [threading.Thread(target=client) for _ in range(4)]
    restarted = None
    try:
        for thread in threads:
            thread.start()
        time.sleep(load_seconds)
        killed_at = time.monotonic()
        server.kill()
        time.sleep(load_seconds)
        server.stop()
        restart_at = time.monotonic()
        restarted = TritonServer(models, ports=server.ports, log=log_dir / "triton-restarted.log").start()
        ready_at = time.monotonic()
        deadline = ready_at + 30
        while time.monotonic() < deadline and not any(t > ready_at and b == "triton" for t, b in served[-50:]):
            time.sleep(0.01)
        back = next((t for t, b in served if t > ready_at and b == "triton"), None)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        gateway.close()
        server.stop()
        if restarted:
            restarted.stop()
    during = [b for t, b in served if killed_at <= t < restart_at]
    return {
        "requests": len(served),
        "failed": len(failures),
        "failures": failures[:5],
        "served_in_process_while_down": during.count("onnxruntime"),
        "triton_restart_to_ready_s": round(ready_at - restart_at, 2),
        "ready_to_traffic_back_s": None if back is None else round(back - ready_at, 3),
    }


def run(
    repo_path: Path,
    rounds: int = 200,
    concurrency: int = 8,
    seconds: float = 5.0,
    json_out: Path | None = None,
    markdown_out: Path | None = None,
) -> int:
    repo = load_repository(repo_path)
    with tempfile.TemporaryDirectory(prefix="flexserve-bench-triton-") as workdir:
        models = Path(workdir) / "models"
        write_triton_repository(repo, models)
        with TritonServer(models, log=Path(workdir) / "triton.log") as server:
            over = overhead(server, repo, rounds, concurrency, seconds)
        fail = failover(models, repo_path, Path(workdir))
    c = concurrency
    lines = [
        f"| family | variant | p50 ORT / gRPC / HTTP (ms) | gRPC / ORT | HTTP / ORT "
        f"| req/s at {c}: ORT / gRPC / HTTP | "
        f"ORT / gRPC at {c} | ORT / HTTP at {c} |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for r in over:
        lines.append(
            f"| {r['family']} | {r['variant']} | {r['onnxruntime_p50_ms']:.3f} / {r['grpc_p50_ms']:.3f} / "
            f"{r['http_p50_ms']:.3f} | {r['grpc_vs_onnxruntime_c1']:.2f}x | {r['http_vs_onnxruntime_c1']:.2f}x | "
            f"{r[f'onnxruntime_c{c}_rps']:.0f} / {r[f'grpc_c{c}_rps']:.0f} / {r[f'http_c{c}_rps']:.0f} | "
            f"{r[f'grpc_vs_onnxruntime_c{c}']:.2f}x | {r[f'http_vs_onnxruntime_c{c}']:.2f}x |"
        )
    lines += [
        "",
        "| failover | measured | |",
        "|---|---|---|",
        f"| requests failed while Triton was killed and restarted | {fail['failed']} of {fail['requests']} | "
        f"{'PASS' if fail['failed'] == 0 else 'FAIL'} (target 0) |",
        f"| served in-process while Triton was down | {fail['served_in_process_while_down']} | |",
        f"| Triton restart until ready | {fail['triton_restart_to_ready_s']} s | |",
        f"| ready until traffic is back on Triton | {fail['ready_to_traffic_back_s']} s | |",
    ]
    text = "\n".join(lines)
    print(text)
    for path, content in (
        (json_out, json.dumps({"overhead": over, "failover": fail}, indent=1)),
        (markdown_out, text + "\n"),
    ):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    return 0 if fail["failed"] == 0 else 1
