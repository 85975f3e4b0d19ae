"""`flexserve bench-scale`: goodput at >= 99% SLO attainment, one machine and beyond.

Each server below is started alone on this machine and driven by the same open-loop Poisson
traffic (`loadtest.bench_routing._step`: budgets drawn from the SLA classes, a request counts when
answered within its own budget, as the client measures it). Its **goodput** is the highest offered
load at which >= 99% of requests meet their budget: the load is raised 1.5x a step until a step
misses (or lowered 1.5x a step until one holds), then bisected twice (a ~10% resolution), `repeats`
times per server (the median and the range are reported). Every server also gets a **CPU probe**:
`PROBE_RPS` for `PROBE_S`, its CPU (all its processes) per request answered.

Servers, per family (the text and the image family by default):
- `gateway x1`, `gateway x2`: `bentoml serve` of the gateway with 1 and 2 worker processes
  (FLEXSERVE_WORKERS; model threads per worker = cores // workers);
- `echo x1`, `echo x2`: a bare BentoML endpoint taking the same JSON (`bench_gateway.Echo`), the floor;
- `ray x2`, `ray echo x2`: FlexServe on Ray Serve with 2 replicas (`serving.rayserve:app`, the
  least-predicted-latency router) and a bare Ray Serve echo deployment (`ray_echo`), the Ray floor;
- `triton http`: Triton's own HTTP front end running the most accurate variant (the peer anchor;
  no budget routing, the same tensors the gateway would run);
- `triton gateway x2` and `... blind`: two gateway workers with the Triton backend on one Triton
  (gRPC), with and without its statistics folded into the predictions (FLEXSERVE_TRITON_STATS_S).
The simulator is then run for the gateway (1 and 2 workers, same budgets and variants), with the
HTTP path's CPU per request taken from the probes (the gateway's CPU per request less the profiled
model time), and its 99%-SLO load set beside the measured goodput.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from loadtest.bench_routing import _step, drain
from loadtest.payloads import model_inputs, typical_requests
from loadtest.servers import RayServeProcess, ServerProcess, tree_cpu_seconds
from loadtest.sla import SlaClass, parse_classes
from serving.gateway import usable_cores
from serving.policy import policy_from_manifest
from serving.repository import load_repository
from serving.tensors import to_json
from training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.99
START_RPS = 40.0
MIN_RPS = 5.0
STEP = 1.5
BISECTIONS = 2
MAX_RPS = 5000.0
MIN_REQUESTS = 200  # a step lasts long enough to send this many: one miss is half of the 1% that matters
PROBE_RPS, PROBE_S = 30.0, 6.0
# The budgets: capacity, not the machine's tail. With the load tests' 20 ms class, goodput at 99% is
# where the client-measured p99 of the bare HTTP path crosses 20 ms (18-24 ms at 90-150 req/s for the
# text family here, a Python client on the same 2 cores), whatever the server's capacity.
SCALE_CLASSES = "standard=50:0.7,batch=200:0.3"
SERVERS = (
    "gateway x1",
    "gateway x2",
    "echo x1",
    "echo x2",
    "ray x2",
    "ray echo x2",
    "triton http",
    "triton gateway x2",  # two gateway workers on one Triton, reading its statistics
    "triton gateway x2 blind",  # ... without (FLEXSERVE_TRITON_STATS_S=0)
)
DEFAULT_SERVERS = {"rnn": SERVERS, "cnn": ("gateway x1", "gateway x2", "echo x1", "echo x2")}
ECHO_PATH = "/v1/echo"


def ray_echo(args: dict):
    """A bare Ray Serve deployment answering any JSON POST with {"ok": true}: the floor under FlexServe
    on Ray (`serve run loadtest.bench_scale:ray_echo replicas=2`)."""
    from ray import serve
    from starlette.requests import Request

    from serving.rayserve import LOGGING

    @serve.deployment(
        name="Echo",
        num_replicas=int(args.get("replicas", 2)),
        ray_actor_options={"num_cpus": 1},
        logging_config=LOGGING,
    )
    class Echo:
        async def __call__(self, request: Request) -> dict:
            if request.method == "POST":
                await request.json()
            return {"ok": True}

    return Echo.bind()


def _start(name: str, repo: Path, family: str, log_dir: Path):
    """(the running server, whether it takes a latency budget in the body)."""
    env = {**os.environ, "FLEXSERVE_REPO": str(repo.resolve()), "FLEXSERVE_PARALLELISM": ""}
    kind, _, size = name.rpartition(" x")
    log = log_dir / f"{name.replace(' ', '_')}.log"
    if kind == "gateway":
        env["FLEXSERVE_WORKERS"] = size
        return ServerProcess("serving.service:FlexServe", env=env, cwd=ROOT, log=log), True
    if kind == "echo":
        env["BENTOML_CONFIG_OPTIONS"] = f'services."flexserve-echo".workers={size}'  # quoted: the name has a "-"
        return ServerProcess("loadtest.bench_gateway:Echo", env=env, cwd=ROOT, log=log), True
    if kind == "ray":
        args = {"repo": str(repo.resolve()), "replicas": int(size)}
        return RayServeProcess(
            "serving.rayserve:app", args, env=env, cwd=ROOT, log=log, ready_path="/v1/variants"
        ), True
    if kind == "ray echo":
        return RayServeProcess(
            "loadtest.bench_scale:ray_echo", {"replicas": int(size)}, env=env, cwd=ROOT, log=log
        ), True
    raise ValueError(f"server must be one of {', '.join(SERVERS)}, got {name!r}")


def _routed(name: str) -> bool:
    return name.startswith(("gateway", "ray x", "triton gateway"))


def _drain(server, name: str) -> None:
    """Until the worker that answers has nothing in flight (at most 30 s), then half a second for the rest."""
    if _routed(name):
        drain(server.url, limit_s=30.0)
    time.sleep(0.5)


def _all_workers_up(server, expected: int, timeout_s: float = 120.0) -> None:
    """Until every one of `expected` workers (or replicas) has answered: a server is ready when its first
    one is, and the others would load their models during the first measurements."""
    import httpx

    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected and time.monotonic() < deadline:
        try:
            seen.add(httpx.get(f"{server.url}/v1/variants", timeout=10).json()["worker"])  # a new connection each
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.2)
    if len(seen) < expected:
        raise RuntimeError(f"only workers {sorted(seen)} of {expected} answered within {timeout_s:.0f} s")


def _measure(server, name, url_path, body, classes, seconds, rng, send_budget, rate) -> dict:
    """One open-loop step: SLO attainment, and the server's and the client's CPU."""
    import resource

    seconds = max(seconds, MIN_REQUESTS / rate)
    cpu0, usage0, wall0 = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    results = asyncio.run(_step(server.url, url_path, body, classes, rate, seconds, None, rng, send_budget))
    wall, usage1 = time.perf_counter() - wall0, resource.getrusage(resource.RUSAGE_SELF)
    answered = sum(r[3] for r in results)
    mix = Counter(r[2] for r in results if r[3])
    _drain(server, name)
    return {
        "load_rps": round(rate, 1),
        "requests": len(results),
        "slo_attainment": round(float(np.mean([r[3] and r[0] <= r[1] for r in results])), 4) if results else 0.0,
        "p99_ms": round(float(np.percentile([r[0] for r in results], 99)), 2) if results else math.nan,
        "server_cpu_ms_per_request": round((server.cpu_seconds() - cpu0) * 1e3 / max(answered, 1), 3),
        "client_cpu_cores": round((usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime) / wall, 3),
        "variant_mix": {variant: round(count / max(answered, 1), 4) for variant, count in mix.most_common()},
    }


def goodput(measure, log=print) -> tuple[float, list[dict]]:
    """The highest load with >= 99% SLO attainment: `measure(rate)` (one step's row) from START_RPS, x1.5
    a step until one misses (or /1.5 a step until one holds, down to MIN_RPS, when even START_RPS
    misses), then bisected `BISECTIONS` times (geometrically) between the last load that held and the
    first that did not. Returns (that load, or 0 when not even MIN_RPS held; the steps)."""
    steps: list[dict] = []

    def holds(rate: float) -> bool:
        steps.append(measure(rate))
        log(f"{rate:.0f} req/s -> SLO {steps[-1]['slo_attainment']:.1%} ({steps[-1].get('requests', '?')} requests)")
        return steps[-1]["slo_attainment"] >= THRESHOLD

    passed, failed, rate = 0.0, None, START_RPS
    if holds(rate):
        passed = rate
        while failed is None and rate * STEP <= MAX_RPS:
            rate *= STEP
            if holds(rate):
                passed = rate
            else:
                failed = rate
    else:
        failed = rate
        while not passed and rate / STEP >= MIN_RPS:
            rate /= STEP
            if holds(rate):
                passed = rate
            else:
                failed = rate
    for _ in range(BISECTIONS if passed and failed else 0):
        rate = math.sqrt(passed * failed)
        if holds(rate):
            passed = rate
        else:
            failed = rate
    return passed, steps


def _log(progress, what: str, line: str) -> None:
    progress.log(f"[bench-scale] {what}: {line}")


def _triton(repo, family: str, log_dir: Path):
    """Triton (its HTTP front end) with every variant; the most accurate one's v2 JSON body."""
    from serving.triton.repository import write_triton_repository
    from serving.triton.server import TritonServer

    models = Path(tempfile.mkdtemp(prefix="flexserve-bench-scale-triton-")) / "models"
    write_triton_repository(repo.root, models, "portable")
    server = TritonServer(models, log=log_dir / "triton.log").start()
    server.url = f"http://{server.http_url}"
    server.cpu_seconds = lambda: tree_cpu_seconds(server.process.pid)
    return server


class _Pair:
    """A gateway in front of a Triton server: one server to the benchmark (URL, CPU, stop)."""

    def __init__(self, triton, gateway):
        self.triton, self.gateway, self.url = triton, gateway, gateway.url

    def cpu_seconds(self) -> float:
        return self.triton.cpu_seconds() + self.gateway.cpu_seconds()

    def stop(self) -> None:
        self.gateway.stop()
        self.triton.stop()


def _triton_gateway(repo: Path, repository, log_dir: Path, blind: bool) -> _Pair:
    triton = _triton(repository, "", log_dir)
    env = {
        **os.environ,
        "FLEXSERVE_REPO": str(repo.resolve()),
        "FLEXSERVE_BACKEND": "triton",
        "FLEXSERVE_TRITON_URL": triton.grpc_url,
        "FLEXSERVE_WORKERS": "2",
        "FLEXSERVE_TRITON_STATS_S": "0" if blind else "0.5",
    }
    try:
        gateway = ServerProcess("serving.service:FlexServe", env=env, cwd=ROOT, log=log_dir / "triton_gateway.log")
    except Exception:
        triton.stop()
        raise
    return _Pair(triton, gateway)


def run(
    repo: Path,
    families: list[str] | None = None,
    servers: list[str] | None = None,
    repeats: int = 2,
    seconds: float = 3.0,
    classes: tuple[SlaClass, ...] | str | None = None,
    out: Path = Path("reports/bench_scale"),
    saved: Path | None = None,
) -> int:
    import httpx

    classes = parse_classes(classes or SCALE_CLASSES) if isinstance(classes or SCALE_CLASSES, str) else classes
    unknown = sorted(set(servers or ()) - set(SERVERS))
    if unknown:
        raise ValueError(f"servers must be among {', '.join(SERVERS)}; got {', '.join(map(repr, unknown))}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    repository = load_repository(repo)
    if saved is not None:  # the report again from a run's saved measurements (e.g. after a simulator change)
        return _report(json.loads(saved.read_text())["runs"], repository, classes, out)
    families = families or list(DEFAULT_SERVERS)
    requests = typical_requests(repository, np.random.default_rng(0))
    out.mkdir(parents=True, exist_ok=True)
    plan = [(f, s) for f in families for s in (servers or DEFAULT_SERVERS.get(f, SERVERS[:4]))]
    rows = []
    with Progress(len(plan) * repeats, "bench-scale", unit="server run") as progress:
        for family, name in plan:
            path, body = requests[family]
            policy = policy_from_manifest(family, repository.family(family))
            if name.startswith("triton gateway"):
                server = _triton_gateway(repo, repository, out, blind=name.endswith("blind"))
                url_path, send_budget, request_body = path, True, body
            elif name == "triton http":
                server = _triton(repository, family, out)
                url_path, send_budget = f"/v2/models/{policy.most_accurate}/infer", False
                feeds = model_inputs(repository, family, body)
                request_body = {
                    "inputs": [to_json(n, v.reshape(-1, 1) if n == "LENGTHS" else v) for n, v in feeds.items()]
                }
            else:
                server, send_budget = _start(name, repo, family, out)
                url_path = ECHO_PATH if "echo" in name else path
                request_body = body
            try:
                if _routed(name):
                    _all_workers_up(server, int(name.split(" x")[1].split()[0]))
                for repeat in range(repeats):
                    rng = np.random.default_rng(repeat)
                    probe = _measure(
                        server, name, url_path, request_body, classes, PROBE_S, rng, send_budget, PROBE_RPS
                    )
                    measure = functools.partial(
                        _measure, server, name, url_path, request_body, classes, seconds, rng, send_budget
                    )
                    best, steps = goodput(measure, functools.partial(_log, progress, f"{family} {name}"))
                    state = {}
                    if _routed(name):
                        state = httpx.get(f"{server.url}/v1/variants").json()
                    rows.append(
                        {
                            "family": family,
                            "server": name,
                            "repeat": repeat,
                            "goodput_rps": round(best, 1),
                            "probe": probe,
                            "steps": steps,
                            "workers": state.get("workers"),
                            "parallelism": state.get("parallelism"),
                        }
                    )
                    progress.update(1, note=f"{family} {name}: goodput {best:.0f} req/s")
            finally:
                server.stop()
    return _report(rows, repository, classes, out)


def _report(rows: list[dict], repository, classes, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows, repository, classes)
    (out / "bench_scale.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=1))
    text = markdown(summary)
    (out / "report.md").write_text(text + "\n")
    plot(summary, out / "bench_scale.png")
    print(text)
    return 0


def summarise(rows: list[dict], repository, classes) -> dict:
    """Per family and server: goodput median and range, CPU per request; the targets; the simulator."""
    out: dict = {"servers": [], "targets": [], "simulated": [], "machine": {"cores": usable_cores()}}
    keys = sorted({(r["family"], r["server"]) for r in rows}, key=lambda k: (k[0], SERVERS.index(k[1])))
    by = {}
    for family, name in keys:
        runs = [r for r in rows if (r["family"], r["server"]) == (family, name)]
        goodputs = [r["goodput_rps"] for r in runs]
        cpu = [r["probe"]["server_cpu_ms_per_request"] for r in runs]
        at = [_step_at(r) for r in runs]
        entry = {
            "family": family,
            "server": name,
            "goodput_rps": float(np.median(goodputs)),
            "at_goodput": {
                "cpu_ms_per_request": float(np.median([a["server_cpu_ms_per_request"] for a in at])),
                "client_cpu_cores": float(np.median([a["client_cpu_cores"] for a in at])),
                "model_ms": float(np.median([_model_ms(repository, family, a) for a in at])),
            }
            if all(at)
            else None,
            "goodput_runs": goodputs,
            "cpu_ms_per_request": round(float(np.median(cpu)), 3),
            "cpu_runs": cpu,
            "workers": runs[0]["workers"],
            "parallelism": runs[0]["parallelism"],
        }
        by[(family, name)] = entry
        out["servers"].append(entry)
    for family in sorted({k[0] for k in keys}):
        one, two = by.get((family, "gateway x1")), by.get((family, "gateway x2"))
        if one and two:
            ratio = two["goodput_rps"] / max(one["goodput_rps"], 1e-9)
            worst = min(two["goodput_runs"]) / max(max(one["goodput_runs"]), 1e-9)
            out["targets"].append(
                {
                    "target": f"{family}: 2 gateway workers >= 1.6x the goodput of 1",
                    "measured": f"{ratio:.2f}x (worst pairing {worst:.2f}x)",
                    "pass": ratio >= 1.6,
                }
            )
        ray, echo = by.get((family, "ray x2")), by.get((family, "ray echo x2"))
        if ray and echo:
            ratio = ray["cpu_ms_per_request"] / max(echo["cpu_ms_per_request"], 1e-9)
            out["targets"].append(
                {
                    "target": f"{family}: FlexServe on Ray Serve <= 1.3x the CPU per request of the bare Ray echo",
                    "measured": f"{ratio:.2f}x ({ray['cpu_ms_per_request']:.1f} vs "
                    f"{echo['cpu_ms_per_request']:.1f} ms)",
                    "pass": ratio <= 1.3,
                }
            )
        for name in ("gateway x1", "gateway x2"):
            measured = by.get((family, name))
            if measured and measured["at_goodput"]:
                out["simulated"].append(simulated(repository, family, measured, classes))
    out["triton_statistics"] = _attainment_by_load(rows, ("triton gateway x2", "triton gateway x2 blind"))
    for sim in out["simulated"]:
        error = sim["simulated_rps"] / max(sim["measured_rps"], 1e-9) - 1
        out["targets"].append(
            {
                "target": f"{sim['family']} {sim['server']}: simulated 99%-SLO load within 20% of measured",
                "measured": f"{sim['simulated_rps']:.0f} vs {sim['measured_rps']:.0f} req/s ({error:+.0%})",
                "pass": abs(error) <= 0.2,
            }
        )
    return out


def _attainment_by_load(rows: list[dict], servers: tuple[str, ...]) -> list[dict]:
    """SLO attainment at each load every one of `servers` was stepped through (median over repeats)."""
    seen: dict = {}
    for row in rows:
        if row["server"] in servers:
            for step in row["steps"]:
                seen.setdefault((row["family"], step["load_rps"]), {}).setdefault(row["server"], []).append(
                    step["slo_attainment"]
                )
    return [
        {"family": family, "load_rps": load} | {name: float(np.median(got[name])) for name in servers}
        for (family, load), got in sorted(seen.items())
        if all(name in got for name in servers)
    ]


def _step_at(run: dict) -> dict | None:
    """The step a run's goodput was measured at (None when nothing held)."""
    return next((step for step in run["steps"] if abs(step["load_rps"] - run["goodput_rps"]) < 0.11), None)


def _model_ms(repository, family: str, step: dict) -> float:
    """The profiled p50 of what the step served, weighed by its variant mix (the most accurate variant
    where a step did not record its mix)."""
    section = repository.family(family)
    policy = policy_from_manifest(family, section)
    mix = step.get("variant_mix") or {policy.most_accurate: 1.0}
    rows = section.rows_per_request
    return sum(share * policy.profile_of(v).at(rows) for v, share in mix.items() if v in policy.variant_names)


def simulated(repository, family: str, measured: dict, classes) -> dict:
    """The simulator's 99%-SLO load for the measured gateway: its workers as replicas (the kernel hands
    connections out at random), its model threads, and, from the step at the measured goodput (the
    same load, so that idle work is not charged to requests), the HTTP path's CPU per request (the
    server's CPU per request less the profiled time of the variants it served) and the machine's
    cores less what the load generator used."""
    from loadtest.simulator import Scenario, slo_load

    section = repository.family(family)
    at = measured["at_goodput"]
    http_cpu_ms = max(0.0, at["cpu_ms_per_request"] - at["model_ms"])
    cores = max(1.0, usable_cores() - at["client_cpu_cores"])
    template = Scenario(
        family,
        section,
        replicas=measured["workers"] or 1,
        parallelism=measured["parallelism"] or 1,
        http_cpu_ms=http_cpu_ms,
        cores=cores,
        duration_s=10.0,
        budgets=tuple((c.budget_ms, c.weight) for c in classes),
    )
    found = slo_load(template, THRESHOLD, lo=START_RPS / 2, hi=MAX_RPS, seeds=(0, 1, 2))
    return {
        "family": family,
        "server": measured["server"],
        "measured_rps": measured["goodput_rps"],
        "simulated_rps": round(found.load_rps, 1),
        "http_cpu_ms": round(http_cpu_ms, 3),
        "cores": round(cores, 2),
    }


def markdown(summary: dict) -> str:
    lines = [
        "| family | server | goodput at >= 99% SLO (req/s): median [runs] | CPU per request at "
        f"{PROBE_RPS:g} req/s (ms) |",
        "|---|---|---:|---:|",
    ]
    for s in summary["servers"]:
        runs = ", ".join(f"{g:g}" for g in s["goodput_runs"])
        lines.append(
            f"| {s['family']} | {s['server']} | {s['goodput_rps']:g} [{runs}] | {s['cpu_ms_per_request']:.2f} |"
        )
    lines += ["", "| simulated gateway | measured | simulated | HTTP CPU stage | cores |", "|---|---:|---:|---:|---:|"]
    for s in summary["simulated"]:
        lines.append(
            f"| {s['family']} {s['server']} | {s['measured_rps']:g} | {s['simulated_rps']:g} | "
            f"{s['http_cpu_ms']:.2f} ms | {s['cores']:g} |"
        )
    if summary.get("triton_statistics"):
        lines += [
            "",
            "| two gateway workers on one Triton: load (req/s) | SLO attainment, statistics read | blind |",
            "|---|---:|---:|",
        ]
        for row in summary["triton_statistics"]:
            lines.append(
                f"| {row['family']} {row['load_rps']:g} | {row['triton gateway x2']:.1%} | "
                f"{row['triton gateway x2 blind']:.1%} |"
            )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'PASS' if t['pass'] else 'FAIL'} |" for t in summary["targets"]]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({s["family"] for s in summary["servers"]})
    fig, axes = plt.subplots(1, len(families), figsize=(6.5 * len(families), 4.4), squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        entries = [s for s in summary["servers"] if s["family"] == family]
        names = [s["server"] for s in entries]
        values = np.array([s["goodput_rps"] for s in entries])
        low = values - [min(s["goodput_runs"]) for s in entries]
        high = np.array([max(s["goodput_runs"]) for s in entries]) - values
        colours = ["tab:green" if "gateway" in n or n == "ray x2" else "tab:grey" for n in names]
        ax.bar(names, values, yerr=[low, high], capsize=4, color=colours)
        for sim in summary["simulated"]:
            if sim["family"] == family:
                ax.plot(names.index(sim["server"]), sim["simulated_rps"], "k_", markersize=22, label="simulated")
        ax.set(title=f"{family}: goodput at >= 99% SLO (median, range)", ylabel="req/s")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles[:1], labels[:1], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
