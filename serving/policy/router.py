"""The policy: for each request, the most accurate variant that will answer within the request's
latency budget under the load of the moment. `Policy` composes the profiles and the estimators.

Per request (`route`):

1. Candidates are the family's variants, most accurate first, minus any below the request's
   quality floor (`min_accuracy`, or `max_rmse` when lower is better; compared with the point
   estimate). A floor no variant meets is an `UnprocessableRequestError`, never a silent downgrade.
   "Most accurate" ignores the test split's noise: the variants whose metric is within the
   tolerance of the best one's (`tie_z` x its standard error, the 95% interval's half-width by
   default) are tied for best and tried fastest first (lower profiled p95 at one row); then the
   same among the rest, tier by tier.
2. A candidate's predicted latency = its profiled p95 at this batch size (interpolated between
   profiled sizes) x its `Slowdown` + the `queue_delay` behind the work in flight on its
   executor (its own, and the `ExternalLoad` other clients put on the same capacity, when a
   backend measures one) + the `LearnedOverhead` + the time the request spent before reaching the server.
3. The first candidate whose prediction fits `budget x (1 - safety_margin)` wins, provided it
   leaves headroom for tight requests: executors serve first come, first served, so a loose
   request on a slow variant makes every request behind it wait. A candidate other than the
   fastest is skipped if, with it queued, the `TightBudget` could no longer be met even by the
   fastest. When none fits: the one with the lowest prediction is served and the decision says
   `predicted_to_meet=False`; with `strict`, an `OverloadError` instead (HTTP 503 + Retry-After).
4. The chosen variant's in-flight count and work are added before the lock is released, so
   concurrent requests see each other. The caller calls `finish(decision, service_ms)` when the
   variant has run (`None` when it failed: nothing is learned), and may report the request's
   whole time in the server (`latency_ms` there, or `observe_latency` once the response has
   left) for the `LearnedOverhead`.

"Fastest" has one meaning everywhere: the lowest profiled p95 at the request's batch size
(`fastest`), the quantile predictions use.

Failure mode: predictions are only as good as the profile and the observations. Time nobody
reports (a request waiting in the kernel's accept queue without X-Request-Start, the response's
way back to the client) is invisible; the safety margin is there for it and for the jitter the
profile did not see. Time a client reports before the server (X-Request-Start) counts against
that request's budget only and is not learned: a client's clock must not steer others.

State sits behind one `threading.Lock`, held for microseconds and never across an `await` or a
model run, so the policy is safe from threads and asyncio tasks alike. The clock is passed in
(the simulator and the tests drive a fake one).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from contract.manifest import FamilySection
from serving.errors import OverloadError, RepositoryError, UnprocessableRequestError
from serving.policy.config import (
    MAX_LATENCY_BUDGET_MS,
    PolicyConfig,
    check_batch_size,
    check_budget,
    check_elapsed,
    check_floor,
    check_strict,
)
from serving.policy.estimators import LearnedOverhead, Slowdown, TightBudget, queue_delay
from serving.policy.profiles import ServiceProfile, VariantProfile

CACHE_LIMIT = 4096  # per-batch-size caches are bounded: batch sizes come from clients


@dataclass(slots=True)
class Decision:
    """What `route` chose and why. `predicted_to_meet` is the policy's prediction; the front end
    measures whether the budget was met."""

    family: str
    variant: str
    batch_size: int
    budget_ms: float
    predicted_ms: float
    predicted_to_meet: bool
    why: str  # "pinned", "best", "skipped" or "none_fits"
    skipped: int = 0  # variants ranked before it, passed over
    margin: float = 0.0
    tied: int = 1  # the variants in the chosen one's tier (tied within `tolerance`), itself included
    tolerance: float = 0.0  # the tier's tolerance, in the metric's units
    _work_ms: float = 0.0
    _base_ms: float = 0.0  # the prediction without the learned overhead and the time before the server
    _finished: bool = False

    @property
    def reason(self) -> str:
        """One line for logs and answers (formatted on demand: routing must stay in microseconds)."""
        if self.why == "pinned":
            return f"pinned to {self.variant}; predicted {self.predicted_ms:.2f} ms of {self.budget_ms:g} ms"
        tied = f" (fastest of {self.tied} tied within ±{self.tolerance:.4g})" if self.tied > 1 else ""
        if self.why == "best":
            return f"most accurate{tied}; predicted {self.predicted_ms:.2f} ms fits {self.budget_ms:g} ms"
        if self.why == "skipped":
            return (
                f"{self.skipped} variant(s) ranked before it predicted over budget or would crowd out tight "
                f"requests{tied}; predicted {self.predicted_ms:.2f} ms fits {self.budget_ms:g} ms"
            )
        return (
            f"no variant fits {self.budget_ms:g} ms (with {self.margin:.0%} margin); serving the fastest, "
            f"predicted {self.predicted_ms:.2f} ms"
        )


class ExternalLoad(NamedTuple):
    """Load on an executor's capacity from clients its policies do not see (other gateway processes
    sharing one Triton server): their requests in flight there (a mean over a recent interval, so
    fractional) and the service those carry (ms)."""

    in_flight: float = 0.0
    work_ms: float = 0.0


NO_EXTERNAL_LOAD = ExternalLoad()


@dataclass(slots=True)
class Executor:
    """What the policy knows of one executor: how many requests it runs at once, and what is in
    flight on it. Policies of several families may share one (pass the same `lock` too).

    `external`: other clients' load on the same capacity, measured elsewhere (the Triton backend's
    statistics poller) and replaced whole, without the policy's lock (one assignment: a reader sees
    the old pair or the new one). Queueing predictions count it like the executor's own work."""

    parallelism: int
    in_flight: int = 0
    work_ms: float = 0.0  # predicted (p95) service of everything in flight
    external: ExternalLoad = NO_EXTERNAL_LOAD


class _Request(NamedTuple):
    """One request as the routing steps see it: checked, with the clock read once."""

    budget_ms: float
    limit_ms: float  # the budget less the safety margin: what a prediction must fit
    batch_size: int
    floor: float | None
    strict: bool
    elapsed_ms: float
    now: float
    skip: frozenset | None = None  # variant states that are not candidates (benched, or excluded)


@dataclass(slots=True, eq=False)  # compared and hashed by identity
class _VariantState:
    spec: VariantProfile
    executor: Executor
    slowdown: Slowdown = field(default_factory=Slowdown)
    in_flight: int = 0
    served: int = 0
    benched_until: float = -math.inf  # after a failure: not a candidate until then (see `bench`)
    tier: int = 0  # 0: tied for best (see `_tiers`)
    tied: int = 1  # variants in its tier
    tolerance: float = 0.0  # its tier's
    cache: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> (p50, p95)

    def service(self, batch_size: int) -> tuple[float, float]:
        """Profiled (p50, p95) ms at this batch size."""
        hit = self.cache.get(batch_size)
        if hit is None:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            profile = self.spec.profile
            hit = self.cache[batch_size] = (profile.at(batch_size, "p50"), profile.at(batch_size, "p95"))
        return hit


class Policy:
    """Routes one family's requests: the algorithm is in the module docstring."""

    def __init__(
        self,
        family: str,
        variants: Iterable[VariantProfile],
        *,
        metric: str = "accuracy",
        higher_is_better: bool = True,
        executors: Mapping[str, int | Executor] | None = None,
        config: PolicyConfig = PolicyConfig(),
        clock: Callable[[], float] = time.monotonic,
        lock: threading.Lock | None = None,
    ):
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
        self._sign = 1.0 if higher_is_better else -1.0
        self._states = self._tiers(variants)
        self._by_name = {s.spec.name: s for s in self._states}
        if len(self._by_name) != len(self._states):
            raise ValueError(f"family {family!r} lists a variant name twice")
        self._fastest: dict[int, _VariantState] = {}  # batch size -> the fastest variant there
        self._benched: set[_VariantState] = set()
        self._tight = TightBudget()
        self._overhead = LearnedOverhead()
        self._protect = config.protect_tight_budgets and config.queue_aware

    def _tiers(self, variants: list[VariantProfile]) -> list[_VariantState]:
        """The routing order: tiers of variants tied within the tolerance of their tier's best (by the
        point estimate), best tier first, fastest first inside a tier (profiled p95 at one row)."""
        by_quality = sorted(variants, key=lambda v: (-self._sign * v.quality, v.profile.at(1, "p95")))
        self._top = by_quality[0]
        states, tier = [], 0
        while by_quality:
            best = by_quality[0]
            tolerance = max(self.config.quality_tolerance, self.config.tie_z * best.quality_se)
            size = next(
                (i for i, v in enumerate(by_quality) if self._sign * (best.quality - v.quality) > tolerance + 1e-12),
                len(by_quality),
            )
            for v in sorted(by_quality[:size], key=lambda v: v.profile.at(1, "p95")):
                states.append(_VariantState(v, self._executors[v.executor], tier=tier, tied=size, tolerance=tolerance))
            by_quality, tier = by_quality[size:], tier + 1
        return states

    # -- queries ---------------------------------------------------------------------------
    @property
    def variant_names(self) -> list[str]:
        """The order in which `route` considers them: best tier first, fastest first in a tier."""
        return [s.spec.name for s in self._states]

    @property
    def most_accurate(self) -> str:
        """The best metric's point estimate (equal ones: the faster)."""
        return self._top.name

    @property
    def tolerance(self) -> float:
        """How close to the best metric a variant must be to count as tied for best."""
        return self._states[0].tolerance

    def tied_for_best(self) -> list[str]:
        """The variants statistically tied for the best metric, fastest first."""
        return [s.spec.name for s in self._states if s.tier == 0]

    def fastest(self, batch_size: int = 1) -> str:
        """The variant with the lowest profiled p95 at this batch size."""
        return self._fastest_at(batch_size).spec.name

    def quality(self, variant: str) -> float:
        return self._state(variant).spec.quality

    def profile_of(self, variant: str) -> ServiceProfile:
        return self._state(variant).spec.profile

    @property
    def overhead_ms(self) -> float:
        """The overhead predictions add: learned mean + `overhead_deviations` mean deviations."""
        return self._overhead.planned_ms

    def snapshot(self) -> list[dict]:
        """Live state per variant (for /v1/variants and debugging), in routing order."""
        with self._lock:
            now = self._clock()
            return [
                {
                    "name": s.spec.name,
                    self.metric: s.spec.quality,
                    "standard_error": s.spec.quality_se,
                    "tied_for_best": s.tier == 0,
                    "profiled_p50_ms": round(s.service(1)[0], 4),
                    "profiled_p95_ms": round(s.service(1)[1], 4),
                    "slowdown": round(self._slowdown(s, now), 4),
                    "predicted_ms": round(self._predict(s, 1, now), 4),
                    "in_flight": s.in_flight,
                    "executor": s.spec.executor,
                    "executor_in_flight": s.executor.in_flight,
                    "served": s.served,
                    "benched_s": round(max(0.0, s.benched_until - now), 3),
                }
                for s in self._states
            ]

    # -- the decision ---------------------------------------------------------------------
    def route(
        self,
        latency_budget_ms: float,
        batch_size: int = 1,
        *,
        min_quality: float | None = None,
        variant: str | None = None,
        strict: bool = False,
        elapsed_ms: float = 0.0,
        exclude: Collection[str] = (),
    ) -> Decision:
        """Choose a variant for one request and count it in flight (see the module docstring).
        `elapsed_ms`: time the request already spent before it reached the server (from the
        client's X-Request-Start), counted against this request's budget only. `exclude`: variants
        not to choose (one that just failed this request); benched variants are not chosen either,
        unless every other is benched or excluded too. A pinned variant is served even if benched."""
        budget = check_budget(latency_budget_ms)
        check_elapsed(elapsed_ms)
        check_batch_size(batch_size)
        check_strict(strict)
        floor = None if min_quality is None else check_floor(min_quality, self.floor_field, self.metric)
        limit = budget * (1.0 - self.config.safety_margin)
        with self._lock:
            now = self._clock()
            skip = self._skipped(exclude, now, floor) if exclude or self._benched else None
            request = _Request(budget, limit, batch_size, floor, strict, elapsed_ms, now, skip)
            if variant is not None:
                return self._route_pinned(self._state(variant), request)
            return self._route_best(request)

    def _route_pinned(self, state: _VariantState, request: _Request) -> Decision:
        floor = request.floor
        if floor is not None and not self._meets(state, floor):
            name = state.spec.name
            raise UnprocessableRequestError(
                self.floor_field,
                f"{floor} is not met by the pinned variant {name} ({self.metric} {state.spec.quality:.4f})",
                f"a floor that {name} meets, or no pin",
            )
        predicted = self._predict(state, request.batch_size, request.now) + request.elapsed_ms
        fits = predicted <= request.limit_ms
        if request.strict and not fits:
            raise self._refusal(state, request, predicted, f"pinned variant {state.spec.name}")
        return self._start(state, request, predicted, fits, "pinned", 0)

    def _route_best(self, request: _Request) -> Decision:
        batch_size, floor, limit, now = request.batch_size, request.floor, request.limit_ms, request.now
        fastest = self._fastest_at(batch_size)
        headroom = self._headroom(request.budget_ms, batch_size, fastest, now) if self._protect else math.inf
        half_life = self.config.correction_half_life_s
        overhead = self._overhead.planned_ms + request.elapsed_ms
        best, best_ms, skipped = None, math.inf, 0
        last_executor, wait = None, 0.0
        skip = request.skip
        for state in self._states:  # the hot path of every request: kept flat
            if floor is not None and not self._meets(state, floor):
                continue
            if skip is not None and state in skip:
                continue
            service = (state.cache.get(batch_size) or state.service(batch_size))[1] * state.slowdown.at(now, half_life)
            executor = state.executor
            if executor is not last_executor:
                last_executor, wait = executor, self._wait(executor) + overhead
            predicted = wait + service
            if predicted <= limit and (
                state is fastest or headroom == math.inf or self._queue_after(state, service) <= headroom
            ):
                why = "skipped" if skipped else "best"
                return self._start(state, request, predicted, True, why, skipped)
            skipped += 1
            if predicted < best_ms:
                best, best_ms = state, predicted
        if best is None:
            top = self._top
            raise UnprocessableRequestError(
                self.floor_field,
                f"{floor} is not met by any {self.family} variant (best: {top.name}, {self.metric} {top.quality:.4f})",
                f"a value that {top.name} meets, or none",
            )
        if best_ms <= limit:  # fits, but every eligible variant would crowd the queue: the quickest
            return self._start(best, request, best_ms, True, "skipped", skipped)
        if request.strict:
            raise self._refusal(best, request, best_ms, f"the fastest eligible variant ({best.spec.name})", True)
        return self._start(best, request, best_ms, False, "none_fits", skipped)

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
            c = self.config
            ratio = service_ms / max(state.service(decision.batch_size)[0], 1e-6)
            state.slowdown.observe(
                ratio, self._clock(), c.correction_half_life_s, c.correction_weight, c.min_correction, c.max_correction
            )

    def keep_learned(self, previous: Policy) -> None:
        """Continue from what `previous` (this family's policy over the version served before) learned
        of this machine: the overhead, the tight-budget state, and each unchanged variant's slowdown and
        bench. The estimators are shared, so requests still finishing on the old version teach both."""
        with self._lock:
            self._overhead, self._tight = previous._overhead, previous._tight
            for state in self._states:
                old = previous._by_name.get(state.spec.name)
                if old is not None and old.spec == state.spec:
                    state.slowdown, state.benched_until = old.slowdown, old.benched_until
                    if old in previous._benched:
                        self._benched.add(state)

    def bench(self, variant: str, seconds: float) -> None:
        """Take a variant that failed out of routing for `seconds` (it is tried again after)."""
        with self._lock:
            state = self._state(variant)
            state.benched_until = self._clock() + seconds
            self._benched.add(state)

    def observe_latency(self, decision: Decision, latency_ms: float) -> None:
        """A request's whole time in the server, reported apart from `finish` (once its response
        has left the server, so that the way out counts too)."""
        with self._lock:
            self._learn_overhead(decision, latency_ms)

    # -- steps ------------------------------------------------------------------------------
    def _learn_overhead(self, decision: Decision, latency_ms: float) -> None:
        """Learn what the prediction missed: the server's latency minus the predicted queueing and service."""
        if self.config.online and 0 <= latency_ms < MAX_LATENCY_BUDGET_MS:  # NaN and absurd values: ignored
            self._overhead.observe(
                latency_ms - decision._base_ms, self.config.overhead_weight, self.config.overhead_deviations
            )

    def _skipped(self, exclude: Collection[str], now: float, floor: float | None) -> frozenset | None:
        """The states that are not candidates now: excluded ones, and benched ones unless nothing else
        that meets the floor is left."""
        for state in [s for s in self._benched if s.benched_until <= now]:
            self._benched.discard(state)  # its bench is over
        excluded = {s for s in self._states if s.spec.name in exclude}
        skip = excluded | self._benched
        eligible = [s for s in self._states if floor is None or self._meets(s, floor)]
        if all(s in skip for s in eligible):  # every eligible variant benched or excluded: the bench gives way
            skip = excluded
        return frozenset(skip) if skip else None

    def _fastest_at(self, batch_size: int) -> _VariantState:
        state = self._fastest.get(batch_size)
        if state is None:
            if len(self._fastest) >= CACHE_LIMIT:
                self._fastest.clear()
            state = self._fastest[batch_size] = min(self._states, key=lambda s: s.service(batch_size)[1])
        return state

    def _state(self, name: str) -> _VariantState:
        state = self._by_name.get(name) if isinstance(name, str) else None
        if state is None:
            raise UnprocessableRequestError(
                "variant", f"{name!r} is not a {self.family} variant", ", ".join(self.variant_names)
            )
        return state

    def _refusal(
        self, state: _VariantState, request: _Request, predicted: float, what: str, any_eligible: bool = False
    ) -> OverloadError | UnprocessableRequestError:
        """Why a strict request is refused: a budget that `state` (with `any_eligible`, every variant
        the request may go to) cannot meet even idle (its profile: no queue, no slowdown) is the
        request's to change (422); otherwise it is the load's (503)."""
        floor, skip = request.floor, request.skip
        states = [state]
        if any_eligible:
            states = [
                s for s in self._states if (floor is None or self._meets(s, floor)) and (skip is None or s not in skip)
            ]
        # Idle: the profiled service time alone. The learned overhead and the time before the server
        # grow with load, and what load causes is a 503 (retry), not a 422 (change the request).
        idle = min(s.service(request.batch_size)[1] for s in states)
        if idle > request.limit_ms:
            return UnprocessableRequestError(
                "latency_budget_ms",
                f"{request.budget_ms:g} ms is less than {what} takes even idle ({idle:.2f} ms, with the safety margin)",
                f"a budget of at least {idle / (1.0 - self.config.safety_margin):.2f} ms, or strict: false",
            )
        return _overload(self.family, predicted, request.budget_ms, what)

    def _meets(self, state: _VariantState, floor: float) -> bool:
        return self._sign * (state.spec.quality - floor) >= 0

    def _slowdown(self, state: _VariantState, now: float) -> float:
        return state.slowdown.at(now, self.config.correction_half_life_s)

    def _wait(self, executor: Executor) -> float:
        if not self.config.queue_aware:
            return 0.0
        external = executor.external
        return queue_delay(
            executor.work_ms + external.work_ms, executor.in_flight + external.in_flight, executor.parallelism
        )

    def _predict(self, state: _VariantState, batch_size: int, now: float) -> float:
        return (
            self._wait(state.executor)
            + self._overhead.planned_ms
            + state.service(batch_size)[1] * self._slowdown(state, now)
        )

    def _headroom(self, budget: float, batch_size: int, fastest: _VariantState, now: float) -> float:
        """The queueing delay that still lets the fastest variant meet the tightest recent budget."""
        fastest_ms = fastest.service(batch_size)[1] * self._slowdown(fastest, now)
        keep = 1.0 - self.config.safety_margin
        # A budget even the fastest variant cannot meet on an idle executor is not protected:
        # one absurd request must not push everyone onto the fastest variant.
        tight = self._tight.update(max(budget, fastest_ms / keep), now, self.config.tight_budget_half_life_s)
        return tight * keep - fastest_ms - self._overhead.planned_ms

    def _queue_after(self, state: _VariantState, service_ms: float) -> float:
        """The queueing delay the next request would meet if this one (`service_ms`) went to `state`."""
        executor, external = state.executor, state.executor.external
        return queue_delay(
            executor.work_ms + external.work_ms + service_ms,
            executor.in_flight + external.in_flight + 1,
            executor.parallelism,
        )

    def _start(
        self, state: _VariantState, request: _Request, predicted: float, fits: bool, why: str, skipped: int
    ) -> Decision:
        """Count the chosen variant in flight (its predicted work too) and describe the decision."""
        work = state.service(request.batch_size)[1] * self._slowdown(state, request.now)
        state.in_flight += 1
        state.served += 1
        state.executor.in_flight += 1
        state.executor.work_ms += work
        base = predicted - self._overhead.planned_ms - request.elapsed_ms
        return Decision(
            self.family,
            state.spec.name,
            request.batch_size,
            request.budget_ms,
            predicted,
            fits,
            why,
            skipped,
            self.config.safety_margin,
            state.tied,
            state.tolerance,
            work,
            base,
        )


def _overload(family: str, predicted: float, budget: float, what: str) -> OverloadError:
    retry = max(0.001, (predicted - budget) / 1000.0)
    return OverloadError(
        f"{family}: {what} is predicted to take {predicted:.2f} ms, over the "
        f"{budget:g} ms budget (strict): retry later, or send a looser budget",
        retry,
    )


def policy_from_manifest(
    family: str,
    section: FamilySection,
    *,
    executor_of: Callable[[str], str] = lambda name: "local",
    executors: Mapping[str, int | Executor] | None = None,
    config: PolicyConfig = PolicyConfig(),
    clock: Callable[[], float] = time.monotonic,
    names: Iterable[str] | None = None,
    lock: threading.Lock | None = None,
) -> Policy:
    """A policy over a manifest family section (only `names`, if given), using its `latency_ms` profiles."""
    wanted = set(names) if names is not None else None
    variants = []
    for v in section.variants:
        if wanted is not None and v.name not in wanted:
            continue
        if not v.latency_ms:
            raise RepositoryError(
                f"variant {v.name} has no latency profile in the manifest: run "
                "`flexserve profile --repo <repository>` on the machine that will serve it"
            )
        variants.append(
            VariantProfile(
                v.name,
                float(v.metrics[section.metric]),
                ServiceProfile.from_manifest(v.latency_ms),
                executor_of(v.name),
                section.standard_error(v) or 0.0,
            )
        )
    return Policy(
        family,
        variants,
        metric=section.metric,
        higher_is_better=section.higher_is_better,
        executors=executors,
        config=config,
        clock=clock,
        lock=lock,
    )
