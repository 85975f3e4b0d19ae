"""`flexserve bench-byom`: bring-your-own-model's targets, measured on real processes.

1. Import: `flexserve import` as a user runs it (a subprocess; BentoML store included) of a ~5 MB
   model and a small one with 1,000 evaluation rows, profiling included, into a copy of the
   repository. Repeated (`--replace` after the first); median and range. Target: under 60 s.
2. CPU per request, v2 against friendly: one `bentoml serve`; for every family, the same request
   (the friendly endpoint's example, and the same tensors as an Open Inference Protocol body) pinned
   to the same variant, closed-loop, alternating endpoints round by round; the server's CPU time (its
   whole process group) per request. Target: v2 / friendly <= 1.1.
3. Swaps under load: the server's capacity on the v2 endpoint (closed-loop, budgets from the SLA
   classes), then Poisson arrivals at half of it while the live version switches every few seconds
   between the last two imports (different weights, so every swap loads new sessions) and
   `POST /v1/admin/reload` is called. A request sent between a switch and its reload's answer
   (plus the drain) is "during a swap"; p99 of those against the others. Every answer's
   `model_version` must have been live at some moment between its request and its answer. Target:
   no failed request, p99 during swaps <= 2x the steady p99. Plotted as latency over time.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.layout import live_dir, switch, version_of
from loadtest.payloads import adapter, model_inputs, typical_requests
from loadtest.servers import ServerProcess
from loadtest.sla import DEFAULT_CLASSES, parse_classes
from serving.repository import load_repository
from serving.tensors import to_json
from training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
FAMILY = "tabular"
HIDDEN = 1100  # the big demo model's width: 1,236k parameters, 4.9 MB of fp32 weights
DRAIN_S = 0.5  # after a reload answers, the old version's last requests are still "during the swap"


@dataclass
class Sample:
    sent: float  # perf_counter seconds
    done: float
    ok: bool
    version: str = ""
    variant: str = ""
    server_ms: float = float("nan")  # the server's own measure (`latency_ms`)

    @property
    def latency_ms(self) -> float:
        return (self.done - self.sent) * 1e3


def _flexserve(*args: str, env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "flexserve", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"flexserve {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started


def import_times(repo: Path, work: Path, repeats: int, env: dict) -> tuple[list[float], list[str], dict]:
    """Time `flexserve import` `repeats` times, alternating two seeds' demo models; the demo models
    are trained first, outside the timing. Returns the times, the versions the last two imports left
    live (different weights), and the model's size."""
    from loadtest.byom import write_demo_models

    seeds = [write_demo_models(work / f"seed{s}", rows=1000, hidden=HIDDEN, seed=s) for s in (0, 1)]
    progress = Progress(repeats, "bench-byom import", unit="import")
    times, live = [], []
    for i in range(repeats):
        models = seeds[i % 2]
        args = ["import", "--family", FAMILY, "--repo", str(repo), "--eval", str(models.eval_set)]
        args += ["--onnx", str(models.big), "--onnx", str(models.small), "--labels", str(models.labels)]
        times.append(_flexserve(*args, *(["--replace"] if i else []), env=env))
        live.append(version_of(repo))
        progress.update(1, note=f"{times[-1]:.1f} s")
    progress.close()
    size = {"big_onnx_bytes": seeds[0].big.stat().st_size, "eval_rows": 1000}
    return times, live[-2:], size


def v2_body(feeds: dict[str, np.ndarray], **parameters) -> dict:
    return {"inputs": [to_json(name, value) for name, value in feeds.items()], "parameters": parameters}


async def _closed_loop(session, url: str, bodies: list[dict], concurrency: int, seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    stop_at = time.perf_counter() + seconds

    async def user(i: int) -> None:
        n = i
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            async with session.post(url, json=bodies[n % len(bodies)]) as answer:
                await answer.read()
                samples.append(Sample(sent, time.perf_counter(), answer.status == 200))
            n += concurrency

    await asyncio.gather(*(user(i) for i in range(concurrency)))
    return samples


async def cpu_per_request(server: ServerProcess, repo: Path, rounds: int, seconds: float) -> list[dict]:
    """Server CPU per request, friendly and v2, per family; same body content and pinned variant."""
    import aiohttp

    live = load_repository(repo, verify=False)
    requests = typical_requests(live, np.random.default_rng(0))
    rows = []
    progress = Progress(len(requests) * rounds * 2 * seconds, "bench-byom CPU per request", unit="s")
    async with aiohttp.ClientSession() as session:
        for family, (path, body) in requests.items():
            variant = live.variants(family)[0].name  # the family's first variant, pinned on both doors
            friendly = {**body, "variant": variant}
            v2 = v2_body(adapter(live, family).example_tensors(np.random.default_rng(0)), variant=variant)
            doors = {"friendly": (server.url + path, friendly), "v2": (server.url + f"/v2/models/{family}/infer", v2)}
            for url, request in doors.values():  # warm both
                await _closed_loop(session, url, [request], 2, 0.5)
            per: dict[str, list[float]] = {"friendly": [], "v2": []}
            failed = 0
            for r in range(rounds):
                for door in ("friendly", "v2") if r % 2 == 0 else ("v2", "friendly"):
                    url, request = doors[door]
                    cpu0 = server.cpu_seconds()
                    samples = await _closed_loop(session, url, [request], 4, seconds)
                    cpu = server.cpu_seconds() - cpu0
                    failed += sum(not s.ok for s in samples)
                    per[door].append(cpu / len(samples) * 1e3)
                    progress.update(seconds, note=f"{family} {door}: {per[door][-1]:.3f} ms CPU per request")
            ratios = [v / f for v, f in zip(per["v2"], per["friendly"], strict=True)]
            rows.append(
                {
                    "family": family,
                    "variant": variant,
                    "friendly_path": path,
                    "v2_inputs": sorted(v2_tensor["name"] for v2_tensor in v2["inputs"]),
                    "friendly_cpu_ms": per["friendly"],
                    "v2_cpu_ms": per["v2"],
                    "ratio_median": statistics.median(ratios),
                    "ratio_range": [min(ratios), max(ratios)],
                    "failed": failed,
                }
            )
    progress.close()
    return rows


async def _open_loop(
    session, url: str, bodies: list[dict], rate: float, seconds: float, rng: np.random.Generator
) -> list[Sample]:
    """Poisson arrivals at `rate` per second for `seconds`; each request its own task (open loop)."""
    samples: list[Sample] = []
    tasks = set()

    async def one(body: dict) -> None:
        sent = time.perf_counter()
        try:
            async with session.post(url, json=body) as answer:
                payload = await answer.json()
                ok = answer.status == 200
                sample = Sample(sent, time.perf_counter(), ok)
                if ok:
                    sample.version = payload["model_version"]
                    sample.variant = payload["parameters"]["variant"]
                    sample.server_ms = payload["parameters"]["latency_ms"]
        except Exception:  # a connection error is a failed request too
            sample = Sample(sent, time.perf_counter(), False)
        samples.append(sample)

    start = time.perf_counter()
    next_at = start
    while next_at - start < seconds:
        next_at += rng.exponential(1 / rate)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        task = asyncio.create_task(one(bodies[int(rng.integers(len(bodies)))]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return samples


async def _loop_lag(seconds: float, tick_s: float = 0.005) -> list[float]:
    """How late this process's own event loop wakes up (ms), tick by tick: a stall of the load
    generator would look like server latency."""
    lags, stop_at = [], time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        asked = time.perf_counter()
        await asyncio.sleep(tick_s)
        lags.append((time.perf_counter() - asked - tick_s) * 1e3)
    return lags


async def _swapper(
    session, server_url: str, repo: Path, versions: list[str], first_s: float, every_s: float, seconds: float
) -> list[tuple[float, float, str]]:
    """Switch the live version every `every_s` (after `first_s`) and ask the gateway to reload:
    (switched at, reload answered at, version) for each swap."""
    swaps = []
    start = time.perf_counter()
    await asyncio.sleep(first_s)
    i = 0
    while time.perf_counter() - start < seconds - every_s:
        target = versions[i % 2]
        switched = time.perf_counter()
        switch(repo, target)
        async with session.post(server_url + "/v1/admin/reload") as answer:
            result = await answer.json()
        if not result.get("reloaded") or result["version"] != target:
            raise RuntimeError(f"the reload to {target} answered {result}")
        swaps.append((switched, time.perf_counter(), target))
        i += 1
        await asyncio.sleep(max(0.0, start + first_s + i * every_s - time.perf_counter()))
    return swaps


def _served_by_a_live_version(sample: Sample, timeline: list[tuple[float, float, str]]) -> bool:
    """Was `sample.version` live at some moment between the request's send and its answer? Version k
    goes live somewhere between its switch and its reload's answer, and stays live until the next
    reload's answer."""
    for k, (switched, _, version) in enumerate(timeline):
        until = timeline[k + 1][1] if k + 1 < len(timeline) else float("inf")
        if version == sample.version and sample.done >= switched and sample.sent <= until:
            return True
    return False


async def swap_under_load(
    server: ServerProcess, repo: Path, versions: list[str], seconds: float, every_s: float, rng: np.random.Generator
) -> dict:
    import aiohttp

    classes = parse_classes(DEFAULT_CLASSES)
    live = load_repository(repo, verify=False)
    feeds = model_inputs(live, FAMILY, typical_requests(live, rng)[FAMILY][1])
    bodies = [v2_body(feeds, latency_budget_ms=c.budget_ms) for c in classes for _ in range(round(c.weight * 10))]
    url = f"{server.url}/v2/models/{FAMILY}/infer"
    # This process holds torch (the demo models) and every sample: a full collection of its heap
    # stalls the event loop for ~0.3 s, which would be measured as server latency. Freeze what exists.
    gc.collect()
    gc.freeze()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _closed_loop(session, url, bodies, 4, 1.0)  # warm
        capacity_samples = await _closed_loop(session, url, bodies, 8, 5.0)
        span = max(s.done for s in capacity_samples) - min(s.sent for s in capacity_samples)
        capacity = len(capacity_samples) / span
        rate = capacity / 2
        start_version = version_of(repo)
        load, swaps, lags = await asyncio.gather(
            _open_loop(session, url, bodies, rate, seconds, rng),
            _swapper(session, server.url, repo, versions, every_s, every_s, seconds),
            _loop_lag(seconds),
        )
    t0 = min(s.sent for s in load)
    timeline = [(-np.inf, -np.inf, start_version), *swaps]
    windows = [(switched, answered + DRAIN_S) for switched, answered, _ in swaps]
    in_swap = [any(a <= s.sent <= b for a, b in windows) for s in load]
    during = [s for s, flag in zip(load, in_swap, strict=True) if flag]
    steady = [s for s, flag in zip(load, in_swap, strict=True) if not flag]
    server_p99 = {
        name: float(np.nanpercentile([s.server_ms for s in group], 99))
        for name, group in (("steady", steady), ("swap", during))
    }
    p99 = {
        name: float(np.percentile([s.latency_ms for s in group], 99))
        for name, group in (("steady", steady), ("swap", during))
    }
    return {
        "capacity_rps": capacity,
        "rate_rps": rate,
        "requests": len(load),
        "failed": sum(not s.ok for s in load),
        "swaps": len(swaps),
        "reload_ms": [round((b - a) * 1e3, 1) for a, b, _ in swaps],
        "requests_during_swaps": len(during),
        "steady_p99_ms": p99["steady"],
        "swap_p99_ms": p99["swap"],
        "p99_ratio": p99["swap"] / p99["steady"],
        "steady_p50_ms": float(np.percentile([s.latency_ms for s in steady], 50)),
        "server_steady_p99_ms": server_p99["steady"],
        "client_loop_lag_max_ms": max(lags),
        "client_loop_lag_p99_ms": float(np.percentile(lags, 99)),
        "server_swap_p99_ms": server_p99["swap"],
        "not_from_a_live_version": sum(s.ok and not _served_by_a_live_version(s, timeline) for s in load),
        "versions_served": sorted({s.version for s in load if s.ok}),
        "_samples": [(s.sent - t0, s.latency_ms, s.ok) for s in load],
        "_windows": [(a - t0, b - t0) for a, b in windows],
    }


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.6 * len(runs)), squeeze=False, sharex=True)
    for ax, (i, run) in zip(axes[:, 0], enumerate(runs), strict=True):
        sent, latency, ok = (np.array(v) for v in zip(*run["_samples"], strict=True))
        for a, b in run["_windows"]:
            ax.axvspan(a, b, color="tab:orange", alpha=0.25, lw=0)
        ax.scatter(sent[ok], latency[ok], s=2, color="tab:blue", label="answered")
        if (~ok).any():
            ax.scatter(sent[~ok], latency[~ok], s=8, color="tab:red", label="failed")
        ax.axhline(run["steady_p99_ms"], color="k", ls="--", lw=0.8, label=f"steady p99 {run['steady_p99_ms']:.1f} ms")
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(
            f"run {i + 1}: {run['rate_rps']:.0f} req/s (half of {run['capacity_rps']:.0f}), {run['swaps']} swaps "
            f"(shaded), p99 during swaps {run['swap_p99_ms']:.1f} ms",
            fontsize=9,
        )
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the load started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _copy_repository(source: Path, work: Path) -> Path:
    """A private copy of `source`'s live version (unversioned: the first import moves it into one),
    or an empty repository when there is none."""
    repo = work / "model_repository"
    live = live_dir(source)
    if (live / "manifest.json").exists():
        shutil.copytree(live, repo)
    else:
        repo.mkdir(parents=True)
    return repo


def _span(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def run(
    repo: Path,
    out: Path,
    imports: int = 3,
    cpu_rounds: int = 4,
    cpu_seconds: float = 3.0,
    swap_runs: int = 3,
    swap_seconds: float = 30.0,
    swap_every_s: float = 3.0,
) -> int:
    if imports < 2:
        raise ValueError("--imports must be at least 2: the swaps alternate between the last two imports")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flexserve-bench-byom-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "FLEXSERVE_WATCH_S": "0"}
        copy = _copy_repository(repo, work)
        seconds, versions, size = import_times(copy, work, imports, env)  # the live one last: swaps start at the other
        env["FLEXSERVE_REPO"] = str(copy)
        with ServerProcess("serving.service:FlexServe", env=env, cwd=ROOT, log=out / "serve.log") as server:
            cpu = asyncio.run(cpu_per_request(server, copy, cpu_rounds, cpu_seconds))
            rng = np.random.default_rng(0)
            swaps = []
            progress = Progress(swap_runs, "bench-byom swaps under load", unit="run")
            for _ in range(swap_runs):
                swaps.append(asyncio.run(swap_under_load(server, copy, versions, swap_seconds, swap_every_s, rng)))
                progress.update(1, note=f"p99 ratio {swaps[-1]['p99_ratio']:.2f}, failed {swaps[-1]['failed']}")
            progress.close()
    _plot(swaps, out / "swap.png")
    lines = [
        f"Import of a {size['big_onnx_bytes'] / 1e6:.1f} MB model and a small one, {size['eval_rows']} evaluation "
        f"rows, profiling included (`flexserve import`, {imports} runs): median {statistics.median(seconds):.1f} s, "
        f"range {min(seconds):.1f}-{max(seconds):.1f} s: {'PASS' if max(seconds) < 60 else 'FAIL'} (< 60 s)",
        "",
        "| family | variant | v2 inputs | server CPU per request, friendly (ms) | v2 (ms) | v2 / friendly, median "
        "(range) | failed | |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in cpu:
        ok = r["ratio_median"] <= 1.1 and r["failed"] == 0
        lines.append(
            f"| {r['family']} | {r['variant']} | {', '.join(r['v2_inputs'])} | {_span(r['friendly_cpu_ms'], 3)} | "
            f"{_span(r['v2_cpu_ms'], 3)} | {r['ratio_median']:.2f} "
            f"({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}) | {r['failed']} | "
            f"{'PASS' if ok else 'FAIL'} (<= 1.1x) |"
        )
    lines += [
        "",
        "| run | capacity (req/s) | offered (req/s) | requests | failed | swaps | reload (ms, median) "
        "| steady p50 / p99 (ms) | p99 during swaps (ms) | ratio | not from a live version | |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for i, s in enumerate(swaps, 1):
        ok = s["failed"] == 0 and s["p99_ratio"] <= 2 and s["not_from_a_live_version"] == 0
        lines.append(
            f"| {i} | {s['capacity_rps']:.0f} | {s['rate_rps']:.0f} | {s['requests']} | {s['failed']} | {s['swaps']} | "
            f"{statistics.median(s['reload_ms']):.0f} | {s['steady_p50_ms']:.2f} / {s['steady_p99_ms']:.2f} | "
            f"{s['swap_p99_ms']:.2f} | {s['p99_ratio']:.2f} | {s['not_from_a_live_version']} | "
            f"{'PASS' if ok else 'FAIL'} |"
        )
    ratios = [s["p99_ratio"] for s in swaps]
    lines += ["", f"p99 during swaps / steady p99 over {swap_runs} runs: {_span(ratios)}; plot: {out / 'swap.png'}"]
    text = "\n".join(lines)
    print(text)
    (out / "report.md").write_text(text + "\n")
    rows = {
        "import_seconds": seconds,
        **size,
        "cpu_per_request": cpu,
        "swaps": [{k: v for k, v in s.items() if not k.startswith("_")} for s in swaps],
    }
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    return 0
