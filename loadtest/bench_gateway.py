"""`flexserve bench-gateway`: the gateway's own cost, and its throughput, against real servers.

1. Overhead at concurrency 1, per family. One loop, round-robin so that machine noise hits
   all three alike: a request to the real gateway (`bentoml serve`, a loose budget: the most
   accurate variant), the same variant run in-process in ONNX Runtime on the same tensors,
   and the same JSON body sent to a bare BentoML echo endpoint (the `Echo` service below,
   also under `bentoml serve`). Gateway overhead = p50(gateway) - p50(ONNX Runtime); the
   target is overhead <= 1.3x p50(echo), i.e. FlexServe adds at most 30% to what any BentoML
   endpoint costs.
2. Throughput at concurrency 8, per family, for a few seconds: 8 client threads sending
   budgets from three SLA classes (default 20, 50 and 200 ms, 30/50/20% of requests);
   requests/s, latency, share within budget (client-side), variant mix, and the client's own
   CPU use (the load generator shares the machine's cores).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import threading
import time
import typing as t
from collections import Counter
from pathlib import Path

import bentoml
import numpy as np

from loadtest.payloads import model_inputs, typical_requests
from loadtest.servers import ServerProcess
from loadtest.sla import DEFAULT_CLASSES, parse_classes
from training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
WARMUP_ROUNDS = 20


@bentoml.service(name="flexserve-echo", http={"host": "127.0.0.1"}, workers=1)
class Echo:
    """A bare BentoML endpoint with the gateway's request fields: the baseline cost of BentoML."""

    @bentoml.api(route="/v1/echo")
    async def echo(
        self,
        images: t.Any = None,
        texts: t.Any = None,
        user_id: t.Any = None,
        k: t.Any = None,
        latency_budget_ms: t.Any = None,
    ) -> dict:
        return {"ok": True}


def overhead(gateway_url: str, echo_url: str, repo_path: Path, rounds: int = 300) -> list[dict]:
    """Concurrency 1: p50 of the gateway, of in-process ONNX Runtime, and of the echo, per family."""
    import httpx

    from serving.gateway import Gateway, GatewayConfig

    local = Gateway(GatewayConfig(repo=repo_path, parallelism=1))  # sessions and policies, as the server has them
    requests = typical_requests(local.repo, np.random.default_rng(0))
    rows = []
    progress = Progress(len(requests) * (rounds + WARMUP_ROUNDS), "bench-gateway overhead", unit="round")
    try:
        with httpx.Client(timeout=30) as client:
            for family, (path, body) in requests.items():
                variant = local.policies[family].most_accurate
                # Pinned: a loose budget alone may get a faster variant tied with it (see the router's tiers).
                body = {**body, "latency_budget_ms": 10_000, "variant": variant}
                feeds = model_inputs(local.repo, family, body)
                times: dict[str, list[float]] = {"gateway": [], "onnxruntime": [], "echo": []}
                served = Counter()
                for i in range(rounds + WARMUP_ROUNDS):
                    t0 = time.perf_counter()
                    answer = client.post(gateway_url + path, json=body)
                    t1 = time.perf_counter()
                    local.backend.run(variant, feeds)  # the gateway's own session, in this process
                    t2 = time.perf_counter()
                    client.post(echo_url + "/v1/echo", json=body).raise_for_status()
                    t3 = time.perf_counter()
                    answer.raise_for_status()
                    served[answer.json()["variant"]] += 1
                    progress.update(1, note=family)
                    if i >= WARMUP_ROUNDS:
                        times["gateway"].append((t1 - t0) * 1e3)
                        times["onnxruntime"].append((t2 - t1) * 1e3)
                        times["echo"].append((t3 - t2) * 1e3)
                p50 = {k: statistics.median(v) for k, v in times.items()}
                added = p50["gateway"] - p50["onnxruntime"]
                rows.append(
                    {
                        "family": family,
                        "variant": variant,
                        "served": dict(served),
                        "rounds": rounds,
                        "gateway_p50_ms": round(p50["gateway"], 3),
                        "onnxruntime_p50_ms": round(p50["onnxruntime"], 3),
                        "echo_p50_ms": round(p50["echo"], 3),
                        "gateway_overhead_ms": round(added, 3),
                        "overhead_vs_echo": round(added / p50["echo"], 3),
                    }
                )
                progress.log(
                    f"[bench-gateway] {family}: gateway p50 {p50['gateway']:.3f} ms, ONNX Runtime "
                    f"{p50['onnxruntime']:.3f} ms, echo {p50['echo']:.3f} ms"
                )
    finally:
        progress.close()
        local.close()
    return rows


# (latency_budget_ms, share of requests): the load tests' default SLA classes, defined once in loadtest/sla.py.
SLA_CLASSES = tuple((c.budget_ms, c.weight) for c in parse_classes(DEFAULT_CLASSES))


def _closed_loop(
    url: str, body: dict, budgets: np.ndarray, weights: np.ndarray, concurrency: int, seconds: float
) -> tuple[list[tuple[float, float, str, bool]], float, float]:
    """`concurrency` client threads posting `body` with budgets drawn by weight for `seconds`: the
    (latency ms, budget ms, variant, ok) of every request, the wall time, and the client's CPU (cores)."""
    import httpx

    results: list[tuple[float, float, str, bool]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def user(seed: int) -> None:
        rng = np.random.default_rng(seed)
        local = []
        with httpx.Client(timeout=30) as client:
            while time.perf_counter() < stop_at:
                budget = float(rng.choice(budgets, p=weights))
                t0 = time.perf_counter()
                answer = client.post(url, json={**body, "latency_budget_ms": budget})
                elapsed = (time.perf_counter() - t0) * 1e3
                ok = answer.status_code == 200
                local.append((elapsed, budget, answer.json()["variant"] if ok else "error", ok))
        with lock:
            results.extend(local)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(s,)) for s in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return results, wall, (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall


def throughput(
    gateway_url: str,
    repo_path: Path,
    concurrency: int = 8,
    seconds: float = 10.0,
    classes: tuple[tuple[float, float], ...] = SLA_CLASSES,
) -> list[dict]:
    """Closed-loop load at `concurrency` per family with a mix of SLA budgets."""
    from serving.repository import load_repository

    repo = load_repository(repo_path, verify=False)
    requests = typical_requests(repo, np.random.default_rng(1))
    rows = []
    progress = Progress(len(requests) * seconds, "bench-gateway throughput", unit="s")
    budgets = np.array([b for b, _ in classes])
    weights = np.array([w for _, w in classes]) / sum(w for _, w in classes)
    for family, (path, body) in requests.items():
        results, wall, client_cpu = _closed_loop(gateway_url + path, body, budgets, weights, concurrency, seconds)
        latencies = np.array([r[0] for r in results])
        mix = Counter(r[2] for r in results)
        rows.append(
            {
                "family": family,
                "concurrency": concurrency,
                "seconds": round(wall, 2),
                "requests": len(results),
                "throughput_rps": round(len(results) / wall, 1),
                "errors": sum(not r[3] for r in results),
                "p50_ms": round(float(np.percentile(latencies, 50)), 3),
                "p99_ms": round(float(np.percentile(latencies, 99)), 3),
                "within_budget": round(float(np.mean([r[0] <= r[1] for r in results])), 4),
                "budgets_ms": [float(b) for b in budgets],
                "variant_mix": {k: round(v / len(results), 3) for k, v in mix.most_common()},
                "client_cpu_cores": round(client_cpu, 2),
            }
        )
        progress.update(seconds, note=f"{family}: {rows[-1]['throughput_rps']} req/s at concurrency {concurrency}")
    progress.close()
    return rows


def run(
    repo: Path,
    rounds: int = 300,
    concurrency: int = 8,
    seconds: float = 10.0,
    json_out: Path | None = None,
    markdown_out: Path | None = None,
) -> int:
    from serving.repository import load_repository

    load_repository(repo)  # a clear error, before any server starts, if it is missing or broken
    env = {**os.environ, "FLEXSERVE_REPO": str(repo.resolve())}
    with (
        ServerProcess("serving.service:FlexServe", env=env, cwd=ROOT) as gateway,
        ServerProcess("loadtest.bench_gateway:Echo", env=env, cwd=ROOT) as echo,
    ):
        over = overhead(gateway.url, echo.url, repo, rounds)
        load = throughput(gateway.url, repo, concurrency, seconds)
    lines = [
        "| family | variant | gateway p50 (ms) | ONNX Runtime p50 (ms) | overhead (ms) | echo p50 (ms) "
        "| overhead / echo | |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in over:
        ok = r["overhead_vs_echo"] <= 1.3
        lines.append(
            f"| {r['family']} | {r['variant']} | {r['gateway_p50_ms']:.3f} | {r['onnxruntime_p50_ms']:.3f} | "
            f"{r['gateway_overhead_ms']:.3f} | {r['echo_p50_ms']:.3f} | {r['overhead_vs_echo']:.2f}x | "
            f"{'PASS' if ok else 'FAIL'} (<= 1.3x) |"
        )
    lines += [
        "",
        f"| family | requests/s at concurrency {concurrency} | p50 / p99 (ms) | within budget | budgets (ms) | "
        "variant mix | client CPU (cores) |",
        "|---|---:|---|---:|---|---|---:|",
    ]
    for r in load:
        mix = ", ".join(f"{k} {v:.0%}" for k, v in r["variant_mix"].items())
        lines.append(
            f"| {r['family']} | {r['throughput_rps']:.0f} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
            f"{r['within_budget']:.1%} | {', '.join(f'{b:g}' for b in r['budgets_ms'])} | {mix} | "
            f"{r['client_cpu_cores']:.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"overhead": over, "throughput": load}, indent=1))
    if markdown_out:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(text + "\n")
    return 0
