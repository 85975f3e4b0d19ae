"""The routing policy: for each request, the most accurate variant that will answer within
the request's latency budget under the load of the moment.

Pure decision code: no web framework, no inference runtime, no torch. Every front end (the
BentoML gateway, the Triton router models) and the simulator run this same class, so a
budget means the same thing whichever door a request comes in by.

The algorithm, per request (`route`):

1. Candidates are the family's variants, most accurate first (among equal accuracy, the
   one with the lower profiled latency first), minus any below the request's quality floor
   (`min_accuracy`, or `max_rmse` for the recommender). A floor no variant meets is an
   `InvalidRequestError`, never a silent downgrade.
2. Each candidate's predicted latency = its service time for this batch size + the queueing
   delay behind the work already in flight on its executor.
   - Service time: the p95 of its latency profile (measured by `flexserve profile`,
     interpolated between profiled batch sizes), times an online slowdown factor: an
     exponentially weighted mean of observed / profiled p50 over the latencies the backend
     reports back (`finish`). A variant that turns slow (a noisy neighbour, a busy GPU) thus
     loses traffic within a few requests.
   - Recovery: a variant that lost its traffic reports nothing, so its slowdown factor decays
     back towards the profile (half-life `correction_half_life_s`); it is tried again, and
     either stays (recovered) or is pushed out again by what it reports.
   - Queueing: an executor runs `parallelism` requests at once. With `n` requests in flight
     carrying `work` ms of predicted service (their p95s: a sum of p95s overstates the p95 of
     the sum, which is the safe side), a new request waits
     `work / parallelism - 0.5 * work / n` once `n >= parallelism` (the running requests are
     assumed half done), and nothing before.
3. The first candidate whose prediction fits `budget * (1 - safety_margin)` wins, provided it
   leaves headroom for tight requests: executors serve first come, first served, so a loose
   request that takes a slow variant makes every request behind it wait. A candidate other
   than the fastest variant is skipped if, with it queued, the tightest budget seen recently
   (a minimum that relaxes with half-life `tight_budget_half_life_s`) could no longer be met
   even by the fastest variant. At low load the queue is empty and this never bites. When none
   fits: by default the candidate with the lowest prediction is served and the decision says
   `budget_met=False`; with `strict`, an `OverloadError` is raised instead (the caller answers
   HTTP 503 with Retry-After).
4. The chosen variant's in-flight count and work are added before the lock is released, so
   concurrent requests see each other. The caller must call `finish(decision, service_ms)`
   when the variant has run (or `finish(decision, None)` when it failed: no observation).

What the profile and the queue model miss is learned too: front ends may report each request's
whole time in the server (`finish(decision, service_ms, latency_ms)`, or `observe_latency`
once the response has left). The policy learns the difference from its own prediction without
this term: HTTP parsing, validation, thread hops, a busy event loop, and service times longer
than profiled (a cold cache, a noisy neighbour). Predictions add the exponentially weighted mean
of that difference plus `overhead_deviations` times its mean deviation (the estimator TCP uses
for its retransmission timeout), so that budgets hold at the tail, not on average. On a CPU-bound
server the difference grows with load, so it pushes traffic to faster variants exactly when
they help. Time a request spent before it reached the server (stamped by the client in
X-Request-Start) counts against that request's own budget (`elapsed_ms`), and is not learned:
a client's clock must not steer other clients' requests.

Failure mode: predictions are only as good as the profile and the observations. Time no one
reports (a request waiting in the kernel's accept queue without X-Request-Start, the response's
way back to the client) is invisible to the policy; the safety margin is there for it and for
the jitter the profile did not see.

State is guarded by one `threading.Lock`, held for a few microseconds and never across an
`await` or a model run, so the policy is safe from threads and from asyncio tasks alike.
"""
from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from serving.errors import InvalidRequestError, OverloadError, RepositoryError

MAX_LATENCY_BUDGET_MS = 60_000.0  # a minute: anything longer is a mistake, not a budget


@dataclass(frozen=True)
class ServiceProfile:
    """Profiled service time (ms) at a few batch sizes, per quantile; linear in between."""

    batch_sizes: tuple[int, ...]
    p50: tuple[float, ...]
    p95: tuple[float, ...]
    p99: tuple[float, ...]

    def __post_init__(self):
        n = len(self.batch_sizes)
        if n == 0 or not (len(self.p50) == len(self.p95) == len(self.p99) == n):
            raise ValueError("a service profile needs p50, p95 and p99 for each of at least one batch size")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)) or self.batch_sizes[0] < 1:
            raise ValueError(f"profile batch sizes must be increasing and >= 1, got {self.batch_sizes}")

    @classmethod
    def from_manifest(cls, latency_ms: Mapping[str, Mapping[str, float]]) -> ServiceProfile:
        """From a manifest variant's `latency_ms`: {"<batch>": {"p50": .., "p95": .., "p99": ..}}."""
        sizes = sorted(int(b) for b in latency_ms)
        rows = [latency_ms[str(b)] for b in sizes]
        return cls(tuple(sizes), *(tuple(float(r[q]) for r in rows) for q in ("p50", "p95", "p99")))

    def at(self, batch_size: int, quantile: str = "p50") -> float:
        """The quantile at `batch_size`: interpolated, or extrapolated along the last segment."""
        values, sizes = getattr(self, quantile), self.batch_sizes
        if len(sizes) == 1:
            return values[0] * batch_size / sizes[0] if batch_size > sizes[0] else values[0]
        i = bisect_left(sizes, batch_size)
        if i < len(sizes) and sizes[i] == batch_size:
            return values[i]
        if i == 0:  # below the smallest profiled batch: as slow as the smallest
            return values[0]
        i = min(i, len(sizes) - 1)
        b0, b1, v0, v1 = sizes[i - 1], sizes[i], values[i - 1], values[i]
        return max(v0, v0 + (v1 - v0) * (batch_size - b0) / (b1 - b0))


@dataclass(frozen=True)
class VariantProfile:
    name: str
    quality: float  # the family's test metric (accuracy, or RMSE for the recommender)
    profile: ServiceProfile
    executor: str = "local"  # variants that share an executor queue behind each other


@dataclass(frozen=True)
class PolicyConfig:
    # Share of the budget held back for jitter the profile did not see.
    safety_margin: float = 0.1
    # Weight of one observation in the slowdown factor: three slow answers move it ~2/3 of the way.
    correction_weight: float = 0.3
    # An unobserved variant's slowdown factor halves its distance to the profile this often.
    correction_half_life_s: float = 1.0
    # Bounds on the slowdown factor, so one absurd observation cannot blind the policy for long.
    min_correction: float = 0.1
    max_correction: float = 100.0
    # Weight of one request's reported latency in the learned overhead (what predictions missed):
    # in its mean and in its mean deviation.
    overhead_weight: float = 0.1
    # Overhead planned for = mean + this many mean deviations (as TCP plans its retransmission
    # timeout from round-trip times, with 4): budgets are met at the tail, not on average. 8, not
    # TCP's 4: on the reference machine the residual's tail is heavy, and in paired runs of the
    # recommender at 15-90 req/s, 8 met 20 ms budgets 99.4% of the time against 98.4% with 4.
    overhead_deviations: float = 8.0
    # Qualities closer than this count as equal (then the faster variant wins); 0 = exact.
    quality_tolerance: float = 0.0
    # False: ignore the work in flight (the static budget-threshold policy).
    queue_aware: bool = True
    # False: trust the profile forever (the static budget-threshold policy).
    online: bool = True
    # Keep queues short enough that the tightest recent budget stays reachable (see step 3).
    protect_tight_budgets: bool = True
    # How fast the remembered tightest budget relaxes towards the budgets now arriving.
    tight_budget_half_life_s: float = 10.0

    def __post_init__(self):
        if not 0 <= self.safety_margin < 1:
            raise ValueError(f"safety_margin must be in [0, 1), got {self.safety_margin}")
        if not 0 < self.correction_weight <= 1:
            raise ValueError(f"correction_weight must be in (0, 1], got {self.correction_weight}")
        if self.correction_half_life_s <= 0:
            raise ValueError(f"correction_half_life_s must be > 0, got {self.correction_half_life_s}")
        if self.overhead_deviations < 0:
            raise ValueError(f"overhead_deviations must be >= 0, got {self.overhead_deviations}")


@dataclass(slots=True)
class Decision:
    """What `route` chose and why. `budget_met` is the prediction; the caller measures the truth."""

    family: str
    variant: str
    batch_size: int
    budget_ms: float
    predicted_ms: float
    budget_met: bool
    why: str  # "pinned", "best", "skipped" or "none_fits"
    skipped: int = 0  # more accurate variants passed over
    margin: float = 0.0
    _work_ms: float = 0.0
    _base_ms: float = 0.0  # the prediction without the learned overhead and the time before the server
    _finished: bool = False

    @property
    def reason(self) -> str:
        """One line for logs and headers (formatted on demand: routing must stay in microseconds)."""
        if self.why == "pinned":
            return f"pinned to {self.variant}; predicted {self.predicted_ms:.2f} ms of {self.budget_ms:g} ms"
        if self.why == "best":
            return f"most accurate; predicted {self.predicted_ms:.2f} ms fits {self.budget_ms:g} ms"
        if self.why == "skipped":
            return (f"{self.skipped} more accurate variant(s) predicted over budget or would crowd out tight "
                    f"requests; predicted {self.predicted_ms:.2f} ms fits {self.budget_ms:g} ms")
        return (f"no variant fits {self.budget_ms:g} ms (with {self.margin:.0%} margin); serving the fastest, "
                f"predicted {self.predicted_ms:.2f} ms")


@dataclass(slots=True)
class Executor:
    """What the policy knows of one executor: how many requests it runs at once, and what is in
    flight on it. Policies of several families may share one (pass the same `lock` too)."""

    parallelism: int
    in_flight: int = 0
    work_ms: float = 0.0  # predicted (p95) service of everything in flight


@dataclass(slots=True)
class _VariantState:
    spec: VariantProfile
    executor: Executor
    correction: float = 1.0  # observed / profiled service time, smoothed
    observed_at: float = -math.inf
    in_flight: int = 0
    served: int = 0
    cache: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> (p50, p95)

    def service(self, batch_size: int) -> tuple[float, float]:
        hit = self.cache.get(batch_size)
        if hit is None:
            profile = self.spec.profile
            hit = self.cache[batch_size] = (profile.at(batch_size, "p50"), profile.at(batch_size, "p95"))
            if len(self.cache) > 4096:  # bounded: batch sizes come from clients
                self.cache.clear()
        return hit


class Policy:
    """Routes one family's requests; see the module docstring for the algorithm."""

    def __init__(self, family: str, variants: Iterable[VariantProfile], *, metric: str = "accuracy",
                 higher_is_better: bool = True, executors: Mapping[str, int | Executor] | None = None,
                 config: PolicyConfig = PolicyConfig(), clock: Callable[[], float] = time.monotonic,
                 lock: threading.Lock | None = None):
        variants = list(variants)
        if not variants:
            raise ValueError(f"family {family!r} has no variants to route between")
        self.family, self.metric, self.higher_is_better, self.config = family, metric, higher_is_better, config
        self.floor_field = f"min_{metric}" if higher_is_better else f"max_{metric}"
        self._clock = clock
        self._lock = lock or threading.Lock()
        given = dict(executors or {})
        for v in variants:
            given.setdefault(v.executor, 1)
        self._executors = {name: e if isinstance(e, Executor) else Executor(int(e)) for name, e in given.items()}
        bad = {k: e.parallelism for k, e in self._executors.items() if e.parallelism < 1}
        if bad:
            raise ValueError(f"executor parallelism must be >= 1, got {bad}")
        sign = 1.0 if higher_is_better else -1.0
        tol = config.quality_tolerance
        # Best first; equal (within tolerance) quality: the faster first.
        ordered = sorted(variants, key=lambda v: (-sign * (round(v.quality / tol) * tol if tol else v.quality),
                                                  v.profile.at(1, "p50")))
        self._states = [_VariantState(v, self._executors[v.executor]) for v in ordered]
        self._by_name = {s.spec.name: s for s in self._states}
        if len(self._by_name) != len(self._states):
            raise ValueError(f"family {family!r} lists a variant name twice")
        self._sign = sign
        self._fastest = min(self._states, key=lambda s: s.service(1)[1])
        self._tight_ms, self._tight_at = math.inf, 0.0
        # What predictions missed (see the module docstring): mean, mean deviation, and what
        # predictions add (mean + `overhead_deviations` deviations).
        self._overhead_mean = self._overhead_dev = self._overhead_ms = 0.0
        self._protect = config.protect_tight_budgets and config.queue_aware

    # -- queries ---------------------------------------------------------------------------
    @property
    def variant_names(self) -> list[str]:
        """Most accurate first: the order in which `route` considers them."""
        return [s.spec.name for s in self._states]

    @property
    def most_accurate(self) -> str:
        return self._states[0].spec.name

    def fastest(self, batch_size: int = 1) -> str:
        """The variant with the lowest profiled p50 at this batch size."""
        return min(self._states, key=lambda s: s.service(batch_size)[0]).spec.name

    def quality(self, variant: str) -> float:
        return self._state(variant).spec.quality

    def profile_of(self, variant: str) -> ServiceProfile:
        return self._state(variant).spec.profile

    def snapshot(self) -> list[dict]:
        """Live state per variant (for /v1/variants and debugging), most accurate first."""
        with self._lock:
            now = self._clock()
            return [{
                "name": s.spec.name, self.metric: s.spec.quality,
                "profiled_p50_ms": round(s.service(1)[0], 4), "profiled_p95_ms": round(s.service(1)[1], 4),
                "slowdown": round(self._correction(s, now), 4),
                "predicted_ms": round(self._predict(s, 1, now), 4),
                "in_flight": s.in_flight, "executor": s.spec.executor,
                "executor_in_flight": s.executor.in_flight, "served": s.served,
            } for s in self._states]

    # -- the decision ---------------------------------------------------------------------
    def route(self, latency_budget_ms: float, batch_size: int = 1, *, min_quality: float | None = None,
              variant: str | None = None, strict: bool = False, elapsed_ms: float = 0.0) -> Decision:
        """Choose a variant for one request and count it in flight (see the module docstring).
        `elapsed_ms`: time the request already spent before it reached the server (from the
        client's X-Request-Start), counted against this request's budget only."""
        budget = _check_budget(latency_budget_ms)
        if not 0.0 <= elapsed_ms <= MAX_LATENCY_BUDGET_MS:  # NaN fails too
            raise ValueError(f"elapsed_ms must be in [0, {MAX_LATENCY_BUDGET_MS:g}], got {elapsed_ms}")
        if type(batch_size) is not int or batch_size < 1:  # noqa: E721 - bool is not a batch size
            raise InvalidRequestError("batch_size", f"got {batch_size!r}", "an integer >= 1")
        if min_quality is not None:
            min_quality = self._check_floor(min_quality)
        limit = budget * (1.0 - self.config.safety_margin)
        with self._lock:
            now = self._clock()
            if variant is not None:
                state = self._state(variant)
                if min_quality is not None and self._sign * (state.spec.quality - min_quality) < 0:
                    raise InvalidRequestError(
                        self.floor_field, f"{min_quality} is not met by the pinned variant {variant} "
                        f"({self.metric} {state.spec.quality:.4f})", f"a floor that {variant} meets, or no pin")
                predicted = self._predict(state, batch_size, now) + elapsed_ms
                fits = predicted <= limit
                if strict and not fits:
                    raise self._overload(predicted, budget, f"pinned variant {variant}")
                return self._start(state, batch_size, budget, predicted, fits, "pinned", 0, now, elapsed_ms)
            fastest, fastest_ms, skipped = None, math.inf, 0
            headroom = self._headroom(budget, batch_size, now) if self._protect else math.inf
            online, half_life = self.config.online, self.config.correction_half_life_s
            last_executor, wait, overhead = None, 0.0, self._overhead_ms + elapsed_ms
            for state in self._states:
                if min_quality is not None and self._sign * (state.spec.quality - min_quality) < 0:
                    continue
                # Inlined `_predict` (this loop is the hot path of every request).
                service = state.cache.get(batch_size) or state.service(batch_size)
                correction = state.correction
                if online and correction != 1.0:
                    age = now - state.observed_at
                    if age > 0:
                        correction = 1.0 + (correction - 1.0) * 2.0 ** (-age / half_life)
                executor = state.executor
                if executor is not last_executor:
                    last_executor, wait = executor, self._wait(executor) + overhead
                predicted = wait + service[1] * correction
                if predicted <= limit and (state is self._fastest or headroom == math.inf
                                           or self._queue_after(state, batch_size, now) <= headroom):
                    return self._start(state, batch_size, budget, predicted, True, "skipped" if skipped else "best",
                                       skipped, now, elapsed_ms)
                skipped += 1
                if predicted < fastest_ms:
                    fastest, fastest_ms = state, predicted
            if fastest is None:
                best = self._states[0].spec
                raise InvalidRequestError(
                    self.floor_field, f"{min_quality} is not met by any {self.family} variant (best: {best.name}, "
                    f"{self.metric} {best.quality:.4f})", f"a value that {best.name} meets, or none")
            if fastest_ms <= limit:  # fits, but every eligible variant would crowd the queue: the quickest
                return self._start(fastest, batch_size, budget, fastest_ms, True, "skipped", skipped, now, elapsed_ms)
            if strict:
                raise self._overload(fastest_ms, budget, f"the fastest eligible variant ({fastest.spec.name})")
            return self._start(fastest, batch_size, budget, fastest_ms, False, "none_fits", skipped, now, elapsed_ms)

    @property
    def overhead_ms(self) -> float:
        """The overhead predictions add: learned mean + `overhead_deviations` mean deviations."""
        return self._overhead_ms

    def finish(self, decision: Decision, service_ms: float | None, latency_ms: float | None = None) -> None:
        """The chosen variant ran for `service_ms` (None: it failed; nothing is learned about it).
        `latency_ms`: the request's whole time in the server, if the front end measures it."""
        with self._lock:
            if latency_ms is not None and not decision._finished:
                self._learn_overhead(decision, latency_ms)
            if decision._finished:
                return  # finishing twice must not corrupt the in-flight counts
            decision._finished = True
            state = self._by_name[decision.variant]
            executor = state.executor
            state.in_flight -= 1
            executor.in_flight -= 1
            executor.work_ms = executor.work_ms - decision._work_ms if executor.in_flight else 0.0
            if service_ms is None or not self.config.online or not service_ms >= 0 or math.isinf(service_ms):
                return
            now = self._clock()
            ratio = service_ms / max(state.service(decision.batch_size)[0], 1e-6)
            w = self.config.correction_weight
            corrected = (1.0 - w) * self._correction(state, now) + w * ratio
            state.correction = min(max(corrected, self.config.min_correction), self.config.max_correction)
            state.observed_at = now

    def observe_latency(self, decision: Decision, latency_ms: float) -> None:
        """A request's whole time in the server, reported apart from `finish` (once its response
        has left the server, so that the way out counts too)."""
        with self._lock:
            self._learn_overhead(decision, latency_ms)

    # -- internals --------------------------------------------------------------------------
    def _learn_overhead(self, decision: Decision, latency_ms: float) -> None:
        """Learn what the prediction missed: the server's latency minus the predicted queueing and service."""
        if self.config.online and 0 <= latency_ms < MAX_LATENCY_BUDGET_MS:  # NaN and absurd values: ignored
            missed = latency_ms - decision._base_ms
            w = self.config.overhead_weight
            self._overhead_dev = (1.0 - w) * self._overhead_dev + w * abs(missed - self._overhead_mean)
            self._overhead_mean = (1.0 - w) * self._overhead_mean + w * missed
            self._overhead_ms = max(0.0, self._overhead_mean + self.config.overhead_deviations * self._overhead_dev)

    def _state(self, name: str) -> _VariantState:
        state = self._by_name.get(name)
        if state is None:
            raise InvalidRequestError("variant", f"{name!r} is not a {self.family} variant",
                                      ", ".join(self.variant_names))
        return state

    def _check_floor(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequestError(self.floor_field, f"got {value!r}", f"a finite number ({self.metric})")
        return float(value)

    def _correction(self, state: _VariantState, now: float) -> float:
        if not self.config.online:
            return 1.0
        c = state.correction
        if c == 1.0:
            return c
        age = now - state.observed_at
        return 1.0 + (c - 1.0) * 2.0 ** (-age / self.config.correction_half_life_s) if age > 0 else c

    def _wait(self, executor: Executor) -> float:
        n = executor.in_flight
        if not self.config.queue_aware or n < executor.parallelism:
            return 0.0
        work = executor.work_ms
        return max(0.0, work / executor.parallelism - 0.5 * work / n)

    def _predict(self, state: _VariantState, batch_size: int, now: float) -> float:
        return (self._wait(state.executor) + self._overhead_ms
                + state.service(batch_size)[1] * self._correction(state, now))

    def _headroom(self, budget: float, batch_size: int, now: float) -> float:
        """The queueing delay that still lets the fastest variant meet the tightest recent budget."""
        fastest = self._fastest
        fastest_ms = fastest.service(batch_size)[1] * self._correction(fastest, now)
        keep = 1.0 - self.config.safety_margin
        # A budget even the fastest variant cannot meet on an idle executor is not protected:
        # one absurd request must not push everyone onto the fastest variant.
        budget = max(budget, fastest_ms / keep)
        tight = self._tight_ms
        if tight < budget:  # relax towards the budgets arriving now
            tight += (budget - tight) * (1.0 - 2.0 ** (-(now - self._tight_at) / self.config.tight_budget_half_life_s))
        tight = min(tight, budget)
        self._tight_ms, self._tight_at = tight, now
        return tight * keep - fastest_ms - self._overhead_ms

    def _queue_after(self, state: _VariantState, batch_size: int, now: float) -> float:
        """The queueing delay the next request would meet if this one went to `state`."""
        executor = state.executor
        n = executor.in_flight + 1
        if n < executor.parallelism:
            return 0.0
        work = executor.work_ms + state.service(batch_size)[1] * self._correction(state, now)
        return max(0.0, work / executor.parallelism - 0.5 * work / n)

    def _start(self, state: _VariantState, batch_size: int, budget: float, predicted: float, fits: bool,
               why: str, skipped: int, now: float, elapsed_ms: float) -> Decision:
        work = state.service(batch_size)[1] * self._correction(state, now)
        state.in_flight += 1
        state.served += 1
        state.executor.in_flight += 1
        state.executor.work_ms += work
        return Decision(self.family, state.spec.name, batch_size, budget, predicted, fits, why, skipped,
                        self.config.safety_margin, work, predicted - self._overhead_ms - elapsed_ms)

    def _overload(self, predicted: float, budget: float, what: str) -> OverloadError:
        retry = max(0.001, (predicted - budget) / 1000.0)
        return OverloadError(f"{self.family}: {what} is predicted to take {predicted:.2f} ms, over the "
                             f"{budget:g} ms budget (strict): retry later, or send a looser budget", retry)


def _check_budget(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError("latency_budget_ms", f"got {value!r}",
                                  f"a number of milliseconds > 0 and <= {MAX_LATENCY_BUDGET_MS:g}")
    if not 0 < value <= MAX_LATENCY_BUDGET_MS:
        raise InvalidRequestError("latency_budget_ms", f"{value:g} is out of range",
                                  f"a number of milliseconds > 0 and <= {MAX_LATENCY_BUDGET_MS:g}")
    return float(value)


def policy_from_manifest(family: str, section: Mapping, *, executor_of: Callable[[str], str] = lambda name: "local",
                         executors: Mapping[str, int | Executor] | None = None, config: PolicyConfig = PolicyConfig(),
                         clock: Callable[[], float] = time.monotonic, names: Iterable[str] | None = None,
                         lock: threading.Lock | None = None) -> Policy:
    """A policy over a manifest family section (only `names`, if given), using its `latency_ms` profiles."""
    metric = section["metric"]
    wanted = set(names) if names is not None else None
    variants = []
    for v in section["variants"]:
        if wanted is not None and v["name"] not in wanted:
            continue
        if not v.get("latency_ms"):
            raise RepositoryError(f"variant {v['name']} has no latency profile in the manifest: run "
                                  "`flexserve profile --repo <repository>` on the machine that will serve it")
        variants.append(VariantProfile(v["name"], float(v["metrics"][metric]),
                                       ServiceProfile.from_manifest(v["latency_ms"]), executor_of(v["name"])))
    return Policy(family, variants, metric=metric, higher_is_better=bool(section["higher_is_better"]),
                  executors=executors, config=config, clock=clock, lock=lock)
