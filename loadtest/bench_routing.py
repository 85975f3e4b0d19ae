"""`flexserve bench-routing`: adaptive routing against pinned variants, on the real gateway.

The same open-loop traffic (Poisson arrivals at a fixed rate, budgets drawn from SLA classes)
is stepped up past saturation against one `bentoml serve`. At each load the three routings run
side by side: `adaptive`, pinned to the most accurate variant (`full`), pinned to the fastest
(`fastest`), each `repeats` times in rotating order; every number is the median over the
repeats (the SLO attainment's range is kept; a routing "holds" a load only when every repeat
does), and a step sends at least `min_requests` requests. The server runs the default number of
gateway workers (`serving.gateway.default_workers`). Per step: SLO attainment (client-measured
latency within the request's own budget; a request unanswered 2 s after the step stops sending is
cancelled and missed), mean accuracy of the variants that answered, throughput, p50/p95/p99, the
variant mix, and the CPU used by the load generator (it shares the cores) and by the server.
Requests carry X-Request-Start. The simulator is run on the same profiles, budgets and loads for comparison.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import time
from collections import Counter
from pathlib import Path

import numpy as np

from loadtest.payloads import typical_requests
from loadtest.servers import ServerProcess
from loadtest.simulator import holds_up_to, sweep
from loadtest.sla import DEFAULT_CLASSES, SlaClass, parse_classes
from serving.gateway import usable_cores
from serving.policy import policy_from_manifest
from serving.repository import load_repository
from training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
ROUTINGS = ("adaptive", "full", "fastest")


GRACE_S = 2.0  # after a step stops sending, how long its requests in flight may still take


async def _step(*args, **kwargs) -> list[tuple[float, float, str, bool]]:
    """`_open_loop` with the client's cyclic garbage collector off: its full collections (~80 ms here,
    over the step's own tasks) would be counted as the server's latency."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return await _open_loop(*args, **kwargs)
    finally:
        if collecting:
            gc.enable()


async def _open_loop(
    url: str,
    path: str,
    body: dict,
    classes,
    rate: float,
    seconds: float,
    pin: str | None,
    rng: np.random.Generator,
    send_budget: bool = True,
) -> list[tuple[float, float, str, bool]]:
    """Open-loop Poisson arrivals at `rate` for `seconds`: (latency ms, budget ms, variant, ok) each.

    A request still unanswered `GRACE_S` after the step stops sending is cancelled and counted as a
    failure (past saturation a queue only grows; waiting it out would measure nothing new). Each
    request carries X-Request-Start, so the gateway counts the time before it against the budget.
    `send_budget=False`: the budget is only the client's yardstick (for servers that take no budget)."""
    import aiohttp  # a BentoML dependency; ~2.5 ms less client-side latency per request than httpx here

    budgets = np.array([c.budget_ms for c in classes])
    weights = np.array([c.weight for c in classes]) / sum(c.weight for c in classes)
    results: list[tuple[float, float, str, bool]] = []
    timeout = aiohttp.ClientTimeout(total=seconds + GRACE_S)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=256), timeout=timeout) as client:

        async def one(budget: float) -> None:
            payload = {
                **body,
                **({"latency_budget_ms": budget} if send_budget else {}),
                **({"variant": pin} if pin else {}),
            }
            started = time.perf_counter()
            ok, variant = False, "error"
            try:
                async with client.post(path, json=payload, headers={"X-Request-Start": f"t={time.time():.6f}"}) as r:
                    if r.status == 200:
                        ok, variant = True, (await r.json()).get("variant", "-")
            except (TimeoutError, aiohttp.ClientError):
                pass
            except asyncio.CancelledError:  # given up on: it waited this long, and failed
                results.append(((time.perf_counter() - started) * 1e3, budget, "error", False))
                raise
            results.append(((time.perf_counter() - started) * 1e3, budget, variant, ok))

        tasks = []
        start = time.perf_counter()
        at = rng.exponential(1.0 / rate)
        while at < seconds:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(float(rng.choice(budgets, p=weights)))))
            at += rng.exponential(1.0 / rate)
        _, late = await asyncio.wait(tasks, timeout=max(0.0, start + seconds + GRACE_S - time.perf_counter()))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    return results


def drain(url: str, limit_s: float = 60.0) -> None:
    """Wait until the gateway (the worker that answers) has nothing in flight, so one step's backlog does
    not spill into the next; a refused or failed poll (a 429 right after a step, say) is polled again."""
    import httpx

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            state = httpx.get(f"{url}/v1/variants", timeout=10)
            if state.status_code == 200 and state.json()["executor_in_flight"] == 0:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def _row(
    routing: str, rate: float, results, metric_of: dict[str, float], cpu_s: float, server_cpu_s: float, wall_s: float
) -> dict:
    latency = np.array([r[0] for r in results])
    served = [r for r in results if r[3]]
    mix = Counter(r[2] for r in served)
    return {
        "routing": routing,
        "load_rps": rate,
        "requests": len(results),
        "errors": len(results) - len(served),
        "slo_attainment": round(float(np.mean([r[3] and r[0] <= r[1] for r in results])), 4),
        "mean_metric": round(float(np.mean([metric_of[r[2]] for r in served])), 5) if served else float("nan"),
        "throughput_rps": round(len(served) / wall_s, 1),
        "p50_ms": round(float(np.percentile(latency, 50)), 2),
        "p95_ms": round(float(np.percentile(latency, 95)), 2),
        "p99_ms": round(float(np.percentile(latency, 99)), 2),
        "variant_mix": {k: round(v / max(len(served), 1), 3) for k, v in mix.most_common()},
        "client_cpu_cores": round(cpu_s / wall_s, 3),
        "server_cpu_cores": round(server_cpu_s / wall_s, 3),
        "server_cpu_ms_per_request": round(server_cpu_s * 1e3 / max(len(served), 1), 2),
    }


def _median_row(runs: list[dict]) -> dict:
    """One row for repeated steps: the median of each number, the pooled variant mix, the SLO range."""
    row = dict(runs[0])
    for key, value in row.items():
        if isinstance(value, float) and key != "load_rps":
            row[key] = round(float(np.median([r[key] for r in runs])), 5)
    row["requests"] = sum(r["requests"] for r in runs)
    row["errors"] = sum(r["errors"] for r in runs)
    names = {n for r in runs for n in r["variant_mix"]}
    pooled = {n: float(np.mean([r["variant_mix"].get(n, 0.0) for r in runs])) for n in names}
    row["variant_mix"] = {n: round(v, 3) for n, v in sorted(pooled.items(), key=lambda kv: -kv[1])}
    row["slo_runs"] = [r["slo_attainment"] for r in runs]
    return row


# CPU per request outside the model (server and client) on the 2-core reference machine: sets the default loads.
HTTP_CPU_MS = 6.0


def _steps_at(
    server: ServerProcess,
    path: str,
    body: dict,
    classes,
    rate: float,
    seconds: float,
    min_requests: int,
    repeats: int,
    pins: dict[str, str | None],
    metric_of: dict[str, float],
    progress: Progress,
) -> dict[str, list[dict]]:
    """The three routings at one load, side by side, `repeats` times in rotating order, on the same
    arrivals and budgets within a repeat: the machine's drift and hiccups hit them alike."""
    # At least `min_requests` a step, so that one miss is a fraction of the 1% that matters.
    step_s = max(seconds, min_requests / rate)
    steps: dict[str, list[dict]] = {r: [] for r in ROUTINGS}
    for rep in range(repeats):
        for routing in ROUTINGS[rep % 3 :] + ROUTINGS[: rep % 3]:
            drain(server.url)
            asyncio.run(
                _step(server.url, path, body, classes, rate, 1.0, pins[routing], np.random.default_rng(1))
            )  # warm up (and let the policy learn) at this load
            cpu0, server0 = resource.getrusage(resource.RUSAGE_SELF), server.cpu_seconds()
            t0 = time.perf_counter()
            results = asyncio.run(
                _step(
                    server.url,
                    path,
                    body,
                    classes,
                    rate,
                    step_s,
                    pins[routing],
                    np.random.default_rng([int(rate * 10), rep]),
                )
            )
            wall = time.perf_counter() - t0
            cpu1, server1 = resource.getrusage(resource.RUSAGE_SELF), server.cpu_seconds()
            cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
            r = _row(routing, rate, results, metric_of, cpu, server1 - server0, wall)
            steps[routing].append(r)
            progress.update(1, note=f"{routing} {rate:g} req/s ({rep + 1}/{repeats}): SLO {r['slo_attainment']:.1%}")
            progress.log(
                f"[bench-routing] {routing:<8} {rate:>7g} req/s ({rep + 1}/{repeats}): SLO "
                f"{r['slo_attainment']:.1%}, mean metric {r['mean_metric']:.4f}, p99 {r['p99_ms']:.1f} ms, "
                f"CPU cores: client {r['client_cpu_cores']}, server {r['server_cpu_cores']}"
            )
    return steps


def run(
    repo: Path,
    family: str = "recsys",
    rates: list[float] | None = None,
    seconds: float = 6.0,
    out: Path = Path("reports/bench_routing"),
    classes: tuple[SlaClass, ...] | str = DEFAULT_CLASSES,
    repeats: int = 3,
    min_requests: int = 300,
) -> int:
    import httpx

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    classes = parse_classes(classes) if isinstance(classes, str) else classes
    repository = load_repository(repo)
    path, body = typical_requests(repository, np.random.default_rng(0))[family]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    env = {**os.environ, "FLEXSERVE_REPO": str(repo.resolve())}
    with ServerProcess("serving.service:FlexServe", env=env, cwd=ROOT, log=out / "gateway.log") as server:
        state = httpx.get(f"{server.url}/v1/variants").json()
        workers, parallelism = state["workers"], state["parallelism"]
        policy = policy_from_manifest(family, repository.family(family))
        metric, metric_of = policy.metric, {name: policy.quality(name) for name in policy.variant_names}
        rows_per_request = repository.family(family).rows_per_request
        pins = {"adaptive": None, "full": policy.most_accurate, "fastest": policy.fastest(rows_per_request)}
        if rates is None:  # 0.1x-1.2x what the most accurate variant plus HTTP can sustain here
            per_request_ms = policy.profile_of(policy.most_accurate).at(rows_per_request) + HTTP_CPU_MS
            capacity = workers * parallelism * 1e3 / per_request_ms
            rates = [round(capacity * f, 1) for f in (0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.2)]
        with Progress(len(rates) * repeats * len(ROUTINGS), f"bench-routing {family}", unit="step") as progress:
            for rate in rates:
                steps = _steps_at(
                    server, path, body, classes, rate, seconds, min_requests, repeats, pins, metric_of, progress
                )
                rows += [_median_row(steps[routing]) for routing in ROUTINGS]
    sim = sweep(
        family,
        repository.family(family),
        replicas=workers,
        parallelism=parallelism,
        http_cpu_ms=HTTP_CPU_MS,
        cores=usable_cores(),
        loads=rates,
        budgets=[(c.budget_ms, c.weight) for c in classes],
        policies=["adaptive", "full", "fastest"],
        arrivals=["poisson"],
        duration_s=20.0,
    )
    # Held means held in every repeat: the worst repeat's attainment, not the median's.
    as_sim = [
        {**r, "policy": r["routing"], "arrivals": "poisson", "slo_attainment": min(r["slo_runs"])} for r in rows
    ]  # the simulator's row keys
    held = {r: holds_up_to(as_sim, r, "poisson") for r in ROUTINGS}
    sim_held = {r: holds_up_to(sim, r, "poisson") for r in ROUTINGS}
    text = _markdown(family, metric, rows, sim, held, sim_held)
    (out / "report.md").write_text(text + "\n")
    (out / "rows.json").write_text(json.dumps({"measured": rows, "simulated": sim}, indent=1))
    _plot(family, rows, out / "bench_routing.png")
    print(text)
    return 0


def _markdown(family, metric, rows, sim, held, sim_held) -> str:
    lines = [
        f"| routing | load (req/s) | SLO attainment: median [range] (simulated) | mean {metric} | throughput "
        "| p50 / p95 / p99 (ms) | "
        "variant mix | CPU cores: client / server | server CPU per request |",
        "|---|---:|---|---:|---:|---|---|---|---:|",
    ]
    simulated = {(r["policy"], r["load_rps"]): r["slo_attainment"] for r in sim}
    for r in rows:
        mix = ", ".join(f"{k} {v:.0%}" for k, v in list(r["variant_mix"].items())[:3])
        s = simulated.get((r["routing"], r["load_rps"]))
        spread = f" [{min(r['slo_runs']):.1%}-{max(r['slo_runs']):.1%}]" if len(r.get("slo_runs", [])) > 1 else ""
        lines.append(
            f"| {r['routing']} | {r['load_rps']:g} | {r['slo_attainment']:.1%}{spread} ({s:.1%}) | "
            f"{r['mean_metric']:.4f} | {r['throughput_rps']:.0f} | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} / "
            f"{r['p99_ms']:.1f} | {mix} | {r['client_cpu_cores']:.2f} / {r['server_cpu_cores']:.2f} | "
            f"{r['server_cpu_ms_per_request']:.1f} ms |"
        )
    full, adaptive = held["full"], held["adaptive"]
    top = max(r["load_rps"] for r in rows)
    verdict = (
        "n/a: full never dropped below 99% here (add higher --loads)"
        if full == top
        else "PASS"
        if full and adaptive >= 2 * full
        else "FAIL"
    )
    low = min(r["load_rps"] for r in rows)
    acc = {r["routing"]: r["mean_metric"] for r in rows if r["load_rps"] == low}
    gap = abs(acc["adaptive"] - acc["full"])
    lines += [
        "",
        "| target | measured | simulated | |",
        "|---|---|---|---|",
        "| adaptive holds >= 99% SLO in every repeat to >= 2x the load pinned full first drops below | "
        f"full {full:g}, adaptive {adaptive:g} "
        f"req/s ({adaptive / full if full else float('inf'):.1f}x) | full {sim_held['full']:g}, adaptive "
        f"{sim_held['adaptive']:g} | {verdict} |",
        f"| adaptive within 1 point of full at low load ({low:g} req/s) | {gap:.4f} | | "
        f"{'PASS' if gap <= 0.01 else 'FAIL'} |",
    ]
    return "\n".join(lines)


def _plot(family: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colours = {"adaptive": "tab:green", "full": "tab:blue", "fastest": "tab:orange"}
    for routing in ROUTINGS:
        line = [r for r in rows if r["routing"] == routing]
        x = [r["load_rps"] for r in line]
        y = np.array([100 * r["slo_attainment"] for r in line])
        runs = [100 * np.array(r.get("slo_runs") or [r["slo_attainment"]]) for r in line]
        spread = np.array([y - [v.min() for v in runs], [v.max() for v in runs] - y])
        axes[0].errorbar(x, y, yerr=spread, marker="o", capsize=3, color=colours[routing], label=routing)
        axes[1].plot(x, [r["p99_ms"] for r in line], marker="o", color=colours[routing], label=f"{routing} p99")
        axes[1].plot(
            x, [r["p50_ms"] for r in line], marker=".", linestyle=":", color=colours[routing], label=f"{routing} p50"
        )
    adaptive = [r for r in rows if r["routing"] == "adaptive"]
    names = sorted({n for r in adaptive for n in r["variant_mix"]})
    bottom = np.zeros(len(adaptive))
    for name in names:
        share = np.array([r["variant_mix"].get(name, 0.0) for r in adaptive])
        axes[2].bar([str(r["load_rps"]) for r in adaptive], share, bottom=bottom, label=name)
        bottom += share
    axes[0].axhline(99, color="grey", linewidth=0.8)
    axes[0].set(
        title=f"{family}: SLO attainment (median and range of repeats)",
        xlabel="offered load (req/s)",
        ylabel="within budget (%)",
        ylim=(0, 101),
    )
    axes[1].set(title="client-measured latency", xlabel="offered load (req/s)", ylabel="ms", yscale="log")
    axes[2].set(title="variant mix chosen by adaptive", xlabel="offered load (req/s)", ylabel="share of answers")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
