"""`flexserve simulate`: a discrete-event simulation of routing policies on profiled variants.

The model of one deployment:

- `replicas` identical gateway replicas behind a load balancer. One replica is one gateway
  process (a "worker" of the gateway: several may share a machine) with its own `Policy`.
- The balancer (`BALANCERS`) sends each request to one replica when it arrives:
  - `random`: uniformly at random, so each replica sees its share of the arrivals (a random split
    of a Poisson stream is Poisson; bursts stay synchronised, because all replicas share one
    burst schedule). Replicas are then independent and are simulated in parallel processes.
  - `p2c` (power of two choices, Ray Serve's default): two distinct replicas drawn uniformly, the
    one with fewer requests in flight (arrived, not answered) wins; ties are broken at random.
  - `least-latency`: the replica whose policy predicts the lowest latency for this request (ties
    broken at random). Each replica's prediction is that of its policy's model, computed by the
    simulator from public state: the event-loop backlog (requests waiting for or in the loop x
    `http_cpu_ms`) + the learned overhead (`Policy.overhead_ms`) + the queueing delay the policy
    predicts behind its executor's in-flight work (`queue_delay` over the replica's `Executor`)
    + the profiled p95 of the variant it would choose: the first in routing order (best tier first,
    fastest first in a tier) that fits the request's budget less the safety margin (the fastest if
    none fits; the pinned one for `full` / `fastest`). The queueing term is used for `static` too,
    which itself routes blind to it. Not read: the policy's online slowdown factors and its tight-budget headroom rule
    (private state; the replicas share one machine profile). Every replica is considered (no
    sampling), without a pass over them: the replicas are kept sorted by their predicted time
    before the model (re-sorted, one bisection, when a replica's state changes), and the
    prediction only drops where the chosen variant changes, so a request costs one bisection
    per distinct variant speed (see `_Ranking`). A caveat, measured: with an HTTP stage under
    CPU contention, the learned overhead (planned at its tail, mean + 8 deviations) differs
    between replicas by noise, and ranking by it herds requests onto whichever replicas look
    quiet; there `least-latency` can do worse than `random`.
  `p2c` and `least-latency` couple the replicas, so all of them run in one event loop (one
  process; O(1) Python work per request for `p2c`, O(log replicas) for `least-latency`).
- Each replica has one event loop in front of its model executor: a single first-come-first-
  served server that spends `http_cpu_ms` of CPU on every request (parsing, JSON, the web
  framework; the response's share is charged here too) before the policy routes it. Then the
  executor runs `parallelism` requests at once (one ONNX Runtime thread each, as profiled) from
  one first-come-first-served queue. The policy is the real policy code, on a simulated clock,
  with the service times it "observes" fed back as in the gateway; with an HTTP stage it is also
  told each request's time in the server from the moment the loop took it up (what the gateway
  measures), so its learned overhead plans for the loop. Queueing before the loop is invisible
  to it, as the kernel's accept queue is to the gateway. `http_cpu_ms=0` is no loop stage.
- CPU contention (`cores`, default unlimited): the `replicas x (1 loop + parallelism model
  threads)` threads may outnumber the machine's cores. Each replica is given `cores / replicas`
  cores, and every stage's service time (loop or model) is stretched by
  `max(1, busy / (cores / replicas))`, where `busy` counts that replica's busy threads (its loop,
  while it serves a request, and its running model threads, the starting stage included) at the
  moment the stage starts. The approximation: the stretch is fixed when a stage starts (exact
  while the busy count does not change during it), and a replica never borrows the cores another
  replica leaves idle (a mean-field split, exact when the replicas are equally busy; it keeps
  the replicas independent under `random`).
- A request's service time is drawn from its variant's profiled distribution at its batch
  size (piecewise linear through min, p50, p95, p99, max), then stretched. Its latency is the
  loop's queueing and service + the executor's queueing + the model's service; it meets its SLO
  when that is within its own latency budget.
- Arrivals: `poisson`, or `bursty` (a two-state modulated Poisson process: 25% of the time at
  2x the mean rate, the rest at 2/3 of it; mean dwell 1 s in a burst and 3 s between).

Policies compared on the same arrivals, budgets and random draws:
`adaptive` (the policy as served), `full` (always the most accurate variant), `fastest`
(always the variant with the lowest profiled p95), and `static` (the most accurate variant
whose profiled p95 fits the budget, blind to load: the policy without queueing or online
correction). Balancers are compared on the same arrivals, budgets and draws too: one stream
of requests (with their budgets and service-time draws) is generated for the whole deployment
and only the choice of replica differs.

`slo_load` finds the highest offered load at which SLO attainment stays >= a threshold (99%
by default), averaged over a few seeds: the number to set beside a measured 99%-SLO load.

Example, 64 replicas under bursty load, per balancer (the same arrivals for each):

    flexserve simulate --family cnn --replicas 64 --parallelism 2 --arrivals bursty \\
        --policies adaptive full --balancer random p2c least-latency \\
        --loads 32000 64000 96000 --duration 20 --markdown reports/balancers.md

or in Python, the load at which each balancer keeps 99% of requests within their budget:

    base = Scenario("cnn", section, arrivals="bursty", replicas=64, duration_s=20.0, budgets=budgets)
    for balancer in BALANCERS:
        found = slo_load(replace(base, balancer=balancer), lo=16_000, hi=128_000)

Speed: the policy's `route` and `finish` dominate (~15 us of Python per request). 64 replicas
at 64x one replica's capacity (on the full model) for 20 simulated seconds, bursty, is ~700k
requests for a 4 ms model: ~12 s of CPU under `random` (split over processes), ~13 s under
`p2c` and ~20 s under `least-latency`, in one process.
"""

from __future__ import annotations

import bisect
import heapq
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from contract.manifest import FamilySection
from serving.policy import Executor, Policy, PolicyConfig, policy_from_manifest, queue_delay
from training.progress import Progress

POLICIES = ("adaptive", "full", "fastest", "static")
ARRIVALS = ("poisson", "bursty")
BALANCERS = ("random", "p2c", "least-latency")
# Default SLA classes, as multiples of the most accurate variant's profiled p99 for a typical
# request: every class fits the full model on an idle replica, so `full` starts at 100%.
DEFAULT_BUDGET_CLASSES = ((2.0, 0.3), (4.0, 0.5), (10.0, 0.2))  # (x full p99, share of requests)
# Default loads, as multiples of one replica's capacity when it always serves the full model.
DEFAULT_LOAD_FACTORS = (0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
BURST = (2.0, 1.0, 2 / 3, 3.0)  # (rate multiplier, mean dwell s) in a burst, then between bursts
_CHUNK = 8192  # balancer draws are made this many requests at a time


@dataclass(frozen=True)
class Scenario:
    family: str
    section: FamilySection  # the manifest's family section, with latency_ms
    policy: str = "adaptive"
    arrivals: str = "poisson"
    load_rps: float = 100.0  # over all replicas
    replicas: int = 1  # gateway processes, each with its own policy
    parallelism: int = 2  # concurrent model runs per replica (one thread each)
    duration_s: float = 30.0
    budgets: tuple[tuple[float, float], ...] = ((10.0, 1.0),)  # (latency_budget_ms, weight)
    seed: int = 0
    balancer: str = "random"  # how requests are spread over the replicas: one of BALANCERS
    http_cpu_ms: float = 0.0  # CPU of each replica's event loop per request, before the model
    cores: float | None = None  # the machine's cores, shared by all replicas; None: no contention

    def __post_init__(self):
        for name, value, accepted in (
            ("policy", self.policy, POLICIES),
            ("arrivals", self.arrivals, ARRIVALS),
            ("balancer", self.balancer, BALANCERS),
        ):
            if value not in accepted:
                raise ValueError(f"{name} must be one of {', '.join(accepted)}, got {value!r}")
        if self.load_rps <= 0 or self.replicas < 1 or self.parallelism < 1 or self.duration_s <= 0:
            raise ValueError("load_rps and duration_s must be > 0, replicas and parallelism >= 1")
        if not (math.isfinite(self.http_cpu_ms) and self.http_cpu_ms >= 0):
            raise ValueError(f"http_cpu_ms must be a finite number >= 0, got {self.http_cpu_ms!r}")
        if self.cores is not None and not (math.isfinite(self.cores) and self.cores > 0):
            raise ValueError(f"cores must be > 0, or None for no CPU contention, got {self.cores!r}")

    @property
    def batch_rows(self) -> int:
        return self.section.rows_per_request

    @property
    def cores_per_replica(self) -> float | None:
        return None if self.cores is None else self.cores / self.replicas


class _Clock:
    """The simulated clock the policy reads (seconds)."""

    __slots__ = ("now",)

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_policy(scenario: Scenario, clock, executor: Executor | None = None) -> tuple[Policy, str | None]:
    """The policy under test, and the variant it is pinned to (full / fastest). `executor`: the
    replica's model executor (pass one to read its in-flight work); by default a fresh one."""
    config = PolicyConfig(queue_aware=False, online=False) if scenario.policy == "static" else PolicyConfig()
    policy = policy_from_manifest(
        scenario.family,
        scenario.section,
        executors={"local": executor or Executor(scenario.parallelism)},
        config=config,
        clock=clock,
    )
    pin = {"full": policy.most_accurate, "fastest": policy.fastest(scenario.batch_rows)}.get(scenario.policy)
    return policy, pin


def burst_schedule(duration_s: float, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """[(start_s, end_s, rate multiplier)] covering the run, alternating calm and burst."""
    high, high_dwell, low, low_dwell = BURST
    segments, t, bursting = [], 0.0, False
    while t < duration_s:
        dwell = rng.exponential(high_dwell if bursting else low_dwell)
        segments.append((t, min(duration_s, t + dwell), high if bursting else low))
        t += dwell
        bursting = not bursting
    return segments


def arrival_times(rate_rps: float, duration_s: float, segments, rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times (ms) of a Poisson process, modulated by `segments` if given."""
    if segments is None:
        segments = [(0.0, duration_s, 1.0)]
    parts = []
    for start, end, multiplier in segments:
        n = rng.poisson(rate_rps * multiplier * (end - start))
        parts.append(rng.uniform(start, end, n))
    times = np.concatenate(parts) if parts else np.empty(0)
    times.sort()
    return times * 1e3


def requests(scenario: Scenario) -> dict[str, np.ndarray]:
    """The deployment's requests, whichever balancer spreads them: arrival (ms), budget (ms) and
    the uniform draw that sets each one's service time (the same draw on any variant)."""
    segments = (
        burst_schedule(scenario.duration_s, np.random.default_rng([scenario.seed, 10**6]))
        if scenario.arrivals == "bursty"
        else None
    )
    rng = np.random.default_rng([scenario.seed, 10**6 + 1])
    arrivals = arrival_times(scenario.load_rps, scenario.duration_s, segments, rng)
    n = len(arrivals)
    budget_values = np.array([b for b, _ in scenario.budgets], dtype=float)
    weights = np.array([w for _, w in scenario.budgets], dtype=float)
    budgets = budget_values[rng.choice(len(budget_values), size=n, p=weights / weights.sum())]
    return {"arrival": arrivals, "budget": budgets, "draw": rng.random(n)}


def _service_table(policy: Policy, scenario: Scenario) -> dict[str, tuple[float, ...]]:
    """Per variant: (min, p50, p95, p99, max) service ms at the scenario's batch size."""
    table = {}
    for v in scenario.section.variants:
        rows = {int(b): s for b, s in v.latency_ms.items()}
        b = scenario.batch_rows
        if b in rows:
            s = rows[b]
            p50, p95, p99 = s["p50"], s["p95"], s["p99"]
            lo, hi = s.get("min", 0.9 * p50), s.get("max", p99)
        else:  # between profiled batch sizes: the policy's interpolation
            profile = policy.profile_of(v.name)
            p50, p95, p99 = (profile.at(b, q) for q in ("p50", "p95", "p99"))
            lo, hi = 0.9 * p50, p99
        # The slowest 1% is drawn up to the measured maximum, capped where one stray pause
        # (a page fault, a GC) would otherwise stand for a whole percentile.
        table[v.name] = (lo, p50, p95, p99, min(hi, 2 * p99 - p95))
    return table


def _draw(quantiles: tuple[float, ...], u: float) -> float:
    lo, p50, p95, p99, hi = quantiles
    if u < 0.5:
        return lo + (p50 - lo) * (u / 0.5)
    if u < 0.95:
        return p50 + (p95 - p50) * ((u - 0.5) / 0.45)
    if u < 0.99:
        return p95 + (p99 - p95) * ((u - 0.95) / 0.04)
    return p99 + (hi - p99) * ((u - 0.99) / 0.01)


class _Ranking:
    """For `least-latency`: the replicas sorted by their predicted time before the model starts
    (`wait`: loop backlog + learned overhead + predicted queueing), and the choice of the replica
    with the lowest predicted latency, ties broken uniformly at random.

    A replica's prediction is `wait + p95 of the variant its policy would choose`. With the
    variants' profiled p95 in the policy's routing order and `m` their running
    minimum, the policy chooses the first variant with p95 <= limit - wait: where `m` first drops
    to <= limit - wait, and its p95 is that value of `m`. So the distinct values of `m` split the
    waits into pieces ((limit - m[j-1], limit - m[j]] chooses the variant of m[j]; the last piece,
    none fits, the fastest), within a piece the prediction grows with the wait, and the best
    replica is the lowest-wait one of some piece: one bisection per piece (a few), no pass over
    the replicas. An update (a replica's state changed) is a bisection and a list insert."""

    def __init__(self, replicas: int, p95: list[float], seed: int):
        self.randbelow = random.Random(seed).randrange
        self.keys = [(0.0, r) for r in range(replicas)]
        self.order = list(self.keys)  # sorted
        drops = [p95[0]]
        for value in p95[1:]:
            if value < drops[-1]:
                drops.append(value)
        self.drops = drops  # the distinct running minima, decreasing

    def update(self, r: int, wait: float) -> None:
        order = self.order
        del order[bisect.bisect_left(order, self.keys[r])]
        key = self.keys[r] = (wait, r)
        bisect.insort(order, key)

    def best(self, limit_ms: float) -> int:
        order, drops = self.order, self.drops
        at, best_ms = 0, order[0][0] + drops[0] if order[0][0] <= limit_ms - drops[0] else math.inf
        for j in range(1, len(drops)):
            k = bisect.bisect_right(order, (limit_ms - drops[j - 1], math.inf))  # the first wait past piece j - 1
            if k == len(order):
                break
            wait = order[k][0]
            if j < len(drops) - 1 and wait > limit_ms - drops[j]:
                continue  # nobody in piece j
            if wait + drops[j] < best_ms:
                at, best_ms = k, wait + drops[j]
        # (With a single variant, or nobody fitting, the lowest wait: `at` stays 0.) Every replica
        # with the same wait predicts the same: one of them, uniformly.
        ties = bisect.bisect_right(order, (order[at][0], math.inf), at) - at
        return order[at + self.randbelow(ties) if ties > 1 else at][1]


def simulate_requests(
    scenario: Scenario,
    arrival: np.ndarray,
    budget: np.ndarray,
    draw: np.ndarray,
    replicas: int = 1,
    balancer: str = "random",
    rng: np.random.Generator | None = None,
    trace: bool = False,
) -> dict[str, np.ndarray]:
    """Serve these requests (sorted arrival ms, budget ms, service-time draw) on `replicas`
    replicas in one event loop, spread by `balancer`. Returns per request: latency, budget,
    finish time (ms), variant index and replica; with `trace` under `p2c`, also `pair` (the two
    replicas offered) and `pair_in_flight` (their requests in flight when it arrived)."""
    n, batch, par = len(arrival), scenario.batch_rows, scenario.parallelism
    http, cpr = scenario.http_cpu_ms, scenario.cores_per_replica
    rng = rng if rng is not None else np.random.default_rng([scenario.seed, 10**6 + 2])
    clock = _Clock()
    executors = [Executor(par) for _ in range(replicas)]
    policies = []
    for executor in executors:
        policy, pin = make_policy(scenario, clock, executor)
        policies.append(policy)
    names = policies[0].variant_names
    index = {name: i for i, name in enumerate(names)}
    quantiles = _service_table(policies[0], scenario)
    routes = [p.route for p in policies]
    finishes = [p.finish for p in policies]
    learn = http > 0  # with a loop stage, the policy learns each request's time in the server
    in_flight = [0] * replicas  # arrived, not answered
    model_busy = [0] * replicas
    loop_busy = [0] * replicas
    loop_count = [0] * replicas  # waiting for, or in, the loop
    model_queue = [deque() for _ in range(replicas)]
    loop_queue = [deque() for _ in range(replicas)]
    events: list = []  # a heap of (time_ms, seq, kind, replica, request, decision, service_ms)
    push, pop = heapq.heappush, heapq.heappop
    seq = 0
    latency, finished = np.empty(n), np.empty(n)
    chosen = np.empty(n, dtype=np.int16)
    replica_of = np.zeros(n, dtype=np.int32)
    loop_start = [0.0] * n if learn else None
    arrival_list, budget_list, draw_list = arrival.tolist(), budget.tolist(), draw.tolist()

    least = balancer == "least-latency" and replicas > 1
    if least:
        p95 = [policies[0].profile_of(name).at(batch, "p95") for name in ([pin] if pin else names)]
        ranking = _Ranking(replicas, p95, int(rng.integers(2**62)))
        update, keep = ranking.update, 1.0 - policies[0].config.safety_margin
        changed: set[int] = set()  # replicas whose state changed since the last request was placed

        def refresh() -> None:
            for r in changed:
                e = executors[r]
                # The learned overhead only moves when it is taught (with an HTTP stage).
                overhead = policies[r].overhead_ms + loop_count[r] * http if learn else 0.0
                update(r, queue_delay(e.work_ms, e.in_flight, par) + overhead)
            changed.clear()

    def start_model(r: int, i: int, decision, now: float) -> None:
        nonlocal seq
        model_busy[r] += 1
        service = _draw(quantiles[decision.variant], draw_list[i])
        if cpr is not None:
            stretch = (model_busy[r] + loop_busy[r]) / cpr
            if stretch > 1.0:
                service *= stretch
        seq += 1
        push(events, (now + service, seq, 0, r, i, decision, service))

    def start_loop(r: int, i: int, now: float) -> None:
        nonlocal seq
        loop_busy[r] = 1
        cpu = http
        if cpr is not None:
            stretch = (model_busy[r] + 1) / cpr
            if stretch > 1.0:
                cpu *= stretch
        loop_start[i] = now
        seq += 1
        push(events, (now + cpu, seq, 1, r, i, None, cpu))

    def enter_model(r: int, i: int, now: float) -> None:
        """The request reaches the router: the policy chooses, the executor runs it or queues it."""
        clock.now = now * 1e-3
        decision = routes[r](budget_list[i], batch, variant=pin)
        if model_busy[r] < par:
            start_model(r, i, decision, now)
        else:
            model_queue[r].append((i, decision))
        if least:
            changed.add(r)

    def handle(event) -> None:
        now, _, kind, r, i, decision, service = event
        if kind == 1:  # the loop is done with request i: next in the loop, and i to the router
            loop_count[r] -= 1
            if loop_queue[r]:
                start_loop(r, loop_queue[r].popleft(), now)
            else:
                loop_busy[r] = 0
            enter_model(r, i, now)
            return
        clock.now = now * 1e-3
        if learn:
            finishes[r](decision, service, now - loop_start[i])
        else:
            finishes[r](decision, service)
        latency[i] = now - arrival_list[i]
        finished[i] = now
        chosen[i] = index[decision.variant]
        in_flight[r] -= 1
        model_busy[r] -= 1
        if model_queue[r]:
            j, queued = model_queue[r].popleft()
            start_model(r, j, queued, now)
        if least:
            changed.add(r)

    if trace and balancer == "p2c":
        pairs = np.zeros((n, 2), dtype=np.int32)
        pair_in_flight = np.zeros((n, 2), dtype=np.int32)
    for first in range(0, n, _CHUNK):
        last = min(n, first + _CHUNK)
        if replicas > 1 and balancer == "random":
            picks = rng.integers(0, replicas, last - first).tolist()
        elif replicas > 1 and balancer == "p2c":
            a = rng.integers(0, replicas, last - first)
            b = rng.integers(0, replicas - 1, last - first)
            b += b >= a  # two distinct replicas, uniformly
            a_list, b_list, coin = a.tolist(), b.tolist(), (rng.random(last - first) < 0.5).tolist()
        for i in range(first, last):
            t = arrival_list[i]
            while events and events[0][0] <= t:
                handle(pop(events))
            if replicas == 1:
                r = 0
            elif balancer == "random":
                r = picks[i - first]
            elif balancer == "p2c":
                ra, rb = a_list[i - first], b_list[i - first]
                na, nb = in_flight[ra], in_flight[rb]
                r = ra if na < nb or (na == nb and coin[i - first]) else rb
                if trace:
                    pairs[i] = ra, rb
                    pair_in_flight[i] = na, nb
            else:
                if changed:
                    refresh()
                r = ranking.best(keep * budget_list[i])
            replica_of[i] = r
            in_flight[r] += 1
            if http > 0:
                loop_count[r] += 1
                if loop_busy[r]:
                    loop_queue[r].append(i)
                else:
                    start_loop(r, i, t)
                if least:
                    changed.add(r)
            else:
                enter_model(r, i, t)
    while events:
        handle(pop(events))
    out = {"latency": latency, "budget": budget, "finished": finished, "variant": chosen, "replica": replica_of}
    if trace and balancer == "p2c":
        out.update(pair=pairs, pair_in_flight=pair_in_flight)
    return out


def _run_replicas(args: tuple[Scenario, list[tuple[int, dict[str, np.ndarray]]]]) -> list[dict[str, np.ndarray]]:
    """Independent replicas (the random balancer), one after another: each one's own requests."""
    scenario, parts = args
    out = []
    for replica, part in parts:
        result = simulate_requests(scenario, part["arrival"], part["budget"], part["draw"])
        result["replica"][:] = replica
        out.append(result)
    return out


def simulate(scenario: Scenario, processes: int | None = None, trace: bool = False) -> dict:
    """Simulate one scenario; returns its summary row (with `trace`, also the per-request arrays
    under "requests_detail"). `processes` splits independent replicas (`random` only)."""
    started = time.perf_counter()
    stream = requests(scenario)
    replicas = scenario.replicas
    balancer_rng = np.random.default_rng([scenario.seed, 10**6 + 2, BALANCERS.index(scenario.balancer)])
    if scenario.balancer == "random" or replicas == 1:
        # Independent replicas: split the stream at random, then simulate each replica alone.
        assign = balancer_rng.integers(0, replicas, len(stream["arrival"]))
        order = np.argsort(assign, kind="stable")
        bounds = np.cumsum(np.bincount(assign, minlength=replicas))[:-1]
        indices = np.split(order, bounds)
        parts = [(r, {key: values[idx] for key, values in stream.items()}) for r, idx in enumerate(indices)]
        processes = max(1, min(processes or os.cpu_count() or 1, replicas))
        if processes == 1:
            results = _run_replicas((scenario, parts))
        else:
            with ProcessPoolExecutor(processes) as pool:
                chunks = pool.map(_run_replicas, [(scenario, parts[p::processes]) for p in range(processes)])
                by_replica = {}
                for p, chunk in enumerate(chunks):
                    by_replica.update(zip(range(p, replicas, processes), chunk, strict=True))
            results = [by_replica[r] for r in range(replicas)]
        merged = {key: np.empty_like(results[0][key], shape=len(order)) for key in results[0]}
        for idx, result in zip(indices, results, strict=True):
            for key, values in result.items():
                merged[key][idx] = values
    else:
        merged = simulate_requests(
            scenario,
            stream["arrival"],
            stream["budget"],
            stream["draw"],
            replicas,
            scenario.balancer,
            balancer_rng,
            trace,
        )
    row = summarise(scenario, merged)
    if trace:
        row["requests_detail"] = {**merged, "arrival": stream["arrival"]}
    row["wall_s"] = round(time.perf_counter() - started, 3)
    return row


def summarise(scenario: Scenario, result: dict[str, np.ndarray]) -> dict:
    # Variant indices follow the policy's routing order; rebuild it to label them.
    order = make_policy(scenario, _Clock())[0]
    names = order.variant_names
    quality = np.array([order.quality(n) for n in names])
    latency, budget, variant = result["latency"], result["budget"], result["variant"]
    n = len(latency)
    fastest = order.fastest(scenario.batch_rows)
    row = {
        "family": scenario.family,
        "policy": scenario.policy,
        "arrivals": scenario.arrivals,
        "balancer": scenario.balancer,
        "load_rps": round(scenario.load_rps, 3),
        "replicas": scenario.replicas,
        "parallelism": scenario.parallelism,
        "http_cpu_ms": scenario.http_cpu_ms,
        "cores": scenario.cores,
        "duration_s": scenario.duration_s,
        "requests": int(n),
        "metric": scenario.section.metric,
        "most_accurate": order.most_accurate,
        "tolerance": order.tolerance,
        "fastest": fastest,
        "most_accurate_p50_ms": order.profile_of(order.most_accurate).at(scenario.batch_rows),
        "fastest_p50_ms": order.profile_of(fastest).at(scenario.batch_rows),
    }
    if n == 0:
        return {
            **row,
            "slo_attainment": math.nan,
            "mean_metric": math.nan,
            "throughput_rps": 0.0,
            "p50_ms": math.nan,
            "p95_ms": math.nan,
            "p99_ms": math.nan,
            "variant_mix": {},
        }
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    counts = np.bincount(variant, minlength=len(names))
    row.update(
        {
            "slo_attainment": round(float((latency <= budget).mean()), 5),
            # The family's metric, averaged over the answers served (RMSE for the recommender).
            "mean_metric": round(float(quality[variant].mean()), 5),
            "throughput_rps": round(
                float((result["finished"] <= scenario.duration_s * 1e3).sum() / scenario.duration_s), 2
            ),
            "p50_ms": round(float(p50), 4),
            "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4),
            "variant_mix": {name: round(float(c / n), 4) for name, c in zip(names, counts, strict=True) if c},
            "slo_by_budget": {f"{b:g}": round(float((latency[budget == b] <= b).mean()), 5) for b in np.unique(budget)},
        }
    )
    if "replica" in result and scenario.replicas > 1:
        # How evenly the balancer spread the requests: the busiest replica's share / the mean share.
        shares = np.bincount(result["replica"], minlength=scenario.replicas)
        row["busiest_replica_x_mean"] = round(float(shares.max() * scenario.replicas / n), 4)
    return row


def default_budgets(policy: Policy, section: FamilySection) -> tuple[tuple[float, float], ...]:
    p99 = policy.profile_of(policy.most_accurate).at(section.rows_per_request, "p99")
    return tuple((round(factor * p99, 2), weight) for factor, weight in DEFAULT_BUDGET_CLASSES)


def full_capacity_rps(policy: Policy, section: FamilySection, parallelism: int) -> float:
    """Requests/s one replica sustains when it always serves the most accurate variant (its
    model threads alone: no HTTP stage, no CPU contention)."""
    p50 = policy.profile_of(policy.most_accurate).at(section.rows_per_request, "p50")
    return parallelism * 1e3 / p50


def sweep(
    family: str,
    section: FamilySection,
    *,
    replicas: int = 1,
    parallelism: int = 2,
    loads: list[float] | None = None,
    budgets: tuple[tuple[float, float], ...] | None = None,
    policies=POLICIES,
    arrivals=ARRIVALS,
    balancers=("random",),
    http_cpu_ms: float = 0.0,
    cores: float | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    processes: int | None = None,
) -> list[dict]:
    """Every policy x arrival pattern x balancer x load for one family; rows as `summarise` makes
    them. `processes`: as `simulate` takes it."""
    probe = policy_from_manifest(family, section, executors={"local": parallelism})
    budgets = budgets or default_budgets(probe, section)
    if loads is None:
        capacity = full_capacity_rps(probe, section, parallelism) * replicas
        loads = [round(capacity * f, 1) for f in DEFAULT_LOAD_FACTORS]
    rows = []
    runs = len(arrivals) * len(loads) * len(balancers) * len(policies)
    with Progress(runs, f"simulate {family}", unit="run") as progress:
        for pattern in arrivals:
            for load in loads:
                # Default: 30 simulated seconds, shortened at high loads to ~200k requests (plenty for a p99).
                seconds = duration_s or min(30.0, max(5.0, 200_000 / load))
                for balancer in balancers:
                    for policy in policies:
                        scenario = Scenario(
                            family,
                            section,
                            policy,
                            pattern,
                            load,
                            replicas,
                            parallelism,
                            seconds,
                            budgets,
                            seed,
                            balancer=balancer,
                            http_cpu_ms=http_cpu_ms,
                            cores=cores,
                        )
                        row = simulate(scenario, processes)
                        rows.append(row)
                        progress.update(
                            1, note=f"{pattern} {load:g} rps {balancer} {policy}: SLO {row['slo_attainment']:.2%}"
                        )
    return rows


class SloLoad(NamedTuple):
    """What `slo_load` found: the highest load (requests/s) that kept the threshold (0.0 if even
    the lowest did not), and every (load, mean SLO attainment) it evaluated, by load."""

    load_rps: float
    points: list[tuple[float, float]]


def slo_load(
    make_scenario: Scenario | Callable[[float, int], Any],
    threshold: float = 0.99,
    *,
    lo: float,
    hi: float,
    seeds: Iterable[int] = (0, 1, 2),
    grid: int = 6,
    rel_tol: float = 0.02,
    max_steps: int = 12,
    processes: int | None = None,
    evaluate: Callable[[Any], float] | None = None,
) -> SloLoad:
    """The highest offered load in [lo, hi] at which SLO attainment (the share of requests whose
    latency is within their budget), averaged over `seeds`, is >= `threshold`.

    `make_scenario(load_rps, seed)` builds each run (a `Scenario` stands for itself with that load
    and seed). A geometric grid of `grid` loads from `lo` upwards is evaluated until one misses
    the threshold; then bisection (geometric midpoints) between the last load that held and the
    first that did not, until they are within `rel_tol` of each other or `max_steps` bisections.
    Attainment is assumed to fall with load (it does, up to noise: more seeds smooth it). If `lo`
    misses, the answer is 0.0; if `hi` holds, it is `hi`. `evaluate` maps a built scenario to its
    attainment (default: `simulate(...)["slo_attainment"]`)."""
    if not 0 < lo < hi or grid < 2 or not 0 < threshold <= 1:
        raise ValueError(f"need 0 < lo < hi, grid >= 2 and 0 < threshold <= 1, got {lo}, {hi}, {grid}, {threshold}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if isinstance(make_scenario, Scenario):
        template = make_scenario
        make_scenario = lambda load, seed: replace(template, load_rps=load, seed=seed)  # noqa: E731
    if evaluate is None:
        evaluate = lambda scenario: simulate(scenario, processes)["slo_attainment"]  # noqa: E731
    points: dict[float, float] = {}

    def attainment(load: float) -> float:
        points[load] = float(np.mean([evaluate(make_scenario(load, seed)) for seed in seeds]))
        return points[load]

    good, bad = 0.0, None
    for load in np.geomspace(lo, hi, grid).tolist():
        if attainment(load) >= threshold:
            good = load
        else:
            bad = load
            break
    if bad is not None and good > 0:
        for _ in range(max_steps):
            if bad / good - 1 <= rel_tol:
                break
            middle = math.sqrt(good * bad)
            if attainment(middle) >= threshold:
                good = middle
            else:
                bad = middle
    return SloLoad(good, sorted(points.items()))


def holds_up_to(
    rows: list[dict], policy: str, arrivals: str, threshold: float = 0.99, balancer: str | None = None
) -> float:
    """The highest load before which every load of `policy` keeps SLO attainment >= threshold (0 if none).
    `balancer`: only that balancer's rows (rows without one count as `random`); None: all rows."""
    best = 0.0
    for row in sorted(
        (
            r
            for r in rows
            if r["policy"] == policy
            and r["arrivals"] == arrivals
            and (balancer is None or r.get("balancer", "random") == balancer)
        ),
        key=lambda r: r["load_rps"],
    ):
        if row["slo_attainment"] < threshold:
            break
        best = row["load_rps"]
    return best


def targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """The routing targets, per family, arrival pattern and balancer: (target, measured, met or None if moot)."""
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        for pattern in dict.fromkeys(r["arrivals"] for r in rows if r["family"] == family):
            at = [r for r in rows if r["family"] == family and r["arrivals"] == pattern]
            for balancer in dict.fromkeys(r.get("balancer", "random") for r in at):
                sub = [r for r in at if r.get("balancer", "random") == balancer]
                out += _targets_of(family, pattern, balancer, sub)
    return out


def _targets_of(family: str, pattern: str, balancer: str, sub: list[dict]) -> list[tuple[str, str, bool | None]]:
    if not {"full", "adaptive"} <= {r["policy"] for r in sub}:
        return []  # the targets compare the two
    out = []
    full, adaptive = holds_up_to(sub, "full", pattern), holds_up_to(sub, "adaptive", pattern)
    ratio = adaptive / full if full else math.inf
    where = f"{family} {pattern}" + ("" if balancer == "random" else f" ({balancer} balancer)")
    name = f"{where}: adaptive holds 99% SLO to >= 2x the load full does"
    first = sub[0]
    if first["most_accurate_p50_ms"] <= 1.25 * first["fastest_p50_ms"]:
        # Nothing to trade: the most accurate variant is (within 25%) the fastest one too.
        out.append(
            (
                name,
                f"n/a: {first['most_accurate']} is the most accurate and within 25% of the "
                f"fastest ({first['most_accurate_p50_ms']:.3f} vs {first['fastest_p50_ms']:.3f} ms p50)",
                None,
            )
        )
    else:
        out.append((name, f"full {full:g} rps, adaptive {adaptive:g} rps ({ratio:.1f}x)", full > 0 and ratio >= 2))
    low = min(r["load_rps"] for r in sub)
    at_low = {r["policy"]: r for r in sub if r["load_rps"] == low}
    if "full" in at_low and "adaptive" in at_low:
        gap = abs(at_low["full"]["mean_metric"] - at_low["adaptive"]["mean_metric"])
        metric = at_low["full"]["metric"]
        # One point of accuracy (the same absolute limit on RMSE), or the router's tie tolerance where
        # that is wider: a variant tied with the most accurate one is as accurate as the test split can tell.
        limit = max(0.01, at_low["full"].get("tolerance", 0.0))
        shown = f"{gap * 100:.2f} points" if metric == "accuracy" else f"{gap:.4f} {metric}"
        name = f"{where}: adaptive within max(1 point, the tie tolerance {limit:.4g}) of full at low load ({low:g} rps)"
        out.append((name, shown, gap <= limit))
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(2, len(families), figsize=(5.2 * len(families), 7.6), squeeze=False)
    colours = {"adaptive": "tab:green", "full": "tab:blue", "fastest": "tab:orange", "static": "tab:purple"}
    styles = {"poisson": "-", "bursty": "--"}
    markers = {"random": ".", "p2c": "^", "least-latency": "s"}
    balancers = list(dict.fromkeys(r.get("balancer", "random") for r in rows))
    for col, family in enumerate(families):
        sub = [r for r in rows if r["family"] == family]
        for policy in dict.fromkeys(r["policy"] for r in sub):
            for pattern in dict.fromkeys(r["arrivals"] for r in sub):
                for balancer in balancers:
                    line = sorted(
                        (
                            r
                            for r in sub
                            if r["policy"] == policy
                            and r["arrivals"] == pattern
                            and r.get("balancer", "random") == balancer
                        ),
                        key=lambda r: r["load_rps"],
                    )
                    if not line:
                        continue
                    x = [r["load_rps"] for r in line]
                    kw = {
                        "color": colours.get(policy),
                        "linestyle": styles.get(pattern, "-"),
                        "marker": markers.get(balancer, "."),
                        "markersize": 4,
                        "label": f"{policy} ({pattern}" + (f", {balancer})" if len(balancers) > 1 else ")"),
                    }
                    if policy == "full" and len(balancers) == 1:  # wide and pale underneath: `static` often coincides
                        kw.update(linewidth=5, alpha=0.35, marker=None, zorder=1)
                    axes[0][col].plot(x, [100 * r["slo_attainment"] for r in line], **kw)
                    axes[1][col].plot(x, [r["mean_metric"] for r in line], **kw)
        metric = sub[0]["metric"]
        axes[0][col].axhline(99, color="grey", linewidth=0.8)
        axes[0][col].set_ylim(0, 101)
        axes[0][col].set_title(f"{family}: SLO attainment (99% line)", fontsize=10)
        axes[0][col].set_ylabel("requests within their budget (%)")
        axes[1][col].set_title(f"{family}: mean {metric} of the answers", fontsize=10)
        axes[1][col].set_ylabel(f"mean served {metric}" + (" (lower is better)" if metric == "rmse" else ""))
        first = sub[0]
        extra = "".join(
            (
                f", HTTP {first['http_cpu_ms']:g} ms" if first.get("http_cpu_ms") else "",
                f", {first['cores']:g} cores" if first.get("cores") else "",
            )
        )
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(
                f"offered load (requests/s, {first['replicas']} replica(s) x parallelism {first['parallelism']}{extra})"
            )
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=9)
    fig.suptitle("FlexServe routing policies in simulation, on the measured latency profiles")
    fig.tight_layout(rect=(0, 0.07 + 0.02 * max(0, len(labels) // 4 - 2), 1, 0.97))
    fig.savefig(path, dpi=110)


def markdown(rows: list[dict], checks: list[tuple[str, str, bool]]) -> str:
    lines = [
        "| family | arrivals | balancer | load (rps) | policy | SLO attainment | mean metric | p50 / p95 / p99 (ms) "
        "| variant mix |",
        "|---|---|---|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        mix = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["variant_mix"].items(), key=lambda kv: -kv[1])[:3])
        lines.append(
            f"| {r['family']} | {r['arrivals']} | {r.get('balancer', 'random')} | {r['load_rps']:g} | {r['policy']} | "
            f"{r['slo_attainment']:.2%} | {r['metric']} {r['mean_metric']:.4f} | "
            f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f} / {r['p99_ms']:.2f} | {mix} |"
        )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [
        f"| {name} | {measured} | {'n/a' if ok is None else 'PASS' if ok else 'FAIL'} |"
        for name, measured, ok in checks
    ]
    return "\n".join(lines)
