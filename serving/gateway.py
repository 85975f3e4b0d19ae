"""The gateway's core, free of any web framework: decode a request with its family's adapter, route
it with the policy, run the chosen variant on a backend, and shape the answer. `serving/service.py`
and `serving/routes.py` are the HTTP edge around it (BentoML: headers, status codes, metrics).

A request's way through: the edge builds one `RequestContext` (budget, time before the server,
arrival time); the gateway decodes the payload, asks the policy (the one place that checks the
routing fields), runs the variant, and returns the answer with a `Completion` that the edge calls
once the response has left, so the policy learns the request's whole time in the server.

**Generations.** What the gateway serves is one loaded repository version: its adapters, sessions
and policies (a `Generation`). When the live version changes on disk (`flexserve train`, `import`
or `profile` switched it; the gateway looks every `watch_s`, and on `reload()`), the new version is
loaded beside the old one, new requests go to it, and the old one is closed once its last request
has finished: no request fails, and every answer comes from a variant of the version that was live
when it was routed.

**A failing variant is not a failed request.** A run that raises, or answers NaN, benches the
variant for `bench_s` (a log line, a metric) and the request is routed again without it.

All variants of all families (of every generation) share one executor: `parallelism` threads, each
running one request on one intra-op thread, as profiled, and the policies share its in-flight
accounting, so a recommender request queued in front of an image request counts in the image
request's prediction.

**Worker processes.** The HTTP edge runs `workers` gateway processes (BentoML workers sharing one
socket; by default one per core with the in-process backend). Each holds its own `Gateway`: its own
sessions, policies and in-flight accounting, and `parallelism` defaults to cores // workers, so that
workers x model threads never exceed the cores the policies' profiles were measured on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from contract.layout import live_dir, version_of
from contract.manifest import BUILD_HINT, DEFAULT_REPOSITORY
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.errors import FlexServeError, InferenceFailedError, InvalidRequestError, OverloadError, RepositoryError
from serving.families import Decoded, Family, family_adapter
from serving.policy import (
    DEFAULT_BENCH_S,
    DEFAULT_LATENCY_BUDGET_MS,
    MAX_LATENCY_BUDGET_MS,
    Decision,
    Executor,
    Policy,
    PolicyConfig,
    policy_from_manifest,
)
from serving.repository import Repository, load_repository
from serving.triton.statistics import STATS_INTERVAL_S

log = logging.getLogger("flexserve.gateway")
BACKENDS = ("onnxruntime", "triton")
MAX_BODY_BYTES = 1 << 20  # 64 images of 28x28 as JSON is ~300 KB: room to spare, bounded


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(backend: str) -> int:
    """Gateway processes when none are asked for: one per core with the in-process backend (the model
    runs are there); one with Triton, whose server runs the models on the same cores."""
    return usable_cores() if backend == "onnxruntime" else 1


@dataclass(frozen=True)
class GatewayConfig:
    repo: Path = DEFAULT_REPOSITORY
    # A BentoML model store tag (e.g. flexserve-model-repository:latest); wins over `repo`.
    model_tag: str | None = None
    device: str = "auto"  # ONNX Runtime: cuda when onnxruntime-gpu and a GPU are present
    # Gateway processes (BentoML workers), each with its own policies: default `default_workers`.
    workers: int | None = None
    # Concurrent model runs per process, one intra-op thread each (as profiled): default cores // workers.
    parallelism: int | None = None
    worker: int = 1  # which of the `workers` processes this is (1-based; BentoML's worker index)
    # The budget of a request that names none.
    default_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS
    backend: str = "onnxruntime"  # or "triton": remote, failing over to in-process ONNX Runtime
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: str = "grpc"  # or "http" (then triton_url is the HTTP port, e.g. 127.0.0.1:8000)
    # How often to read Triton's per-model statistics (seconds; 0: never): the shared queue at Triton.
    triton_stats_s: float = STATS_INTERVAL_S
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get 413 before they are read
    # How often to look for a new live repository version (seconds); 0: only on reload().
    watch_s: float = 1.0
    # How long a variant that failed is left out of routing (seconds).
    bench_s: float = DEFAULT_BENCH_S
    # Variants within this many standard errors of the best metric are tied for best (0: rank the
    # point estimates as they are). See `PolicyConfig.tie_z`.
    tie_z: float = PolicyConfig.tie_z

    ENVIRONMENT: ClassVar[dict[str, tuple[str, type]]] = {  # field -> (variable, type)
        "repo": ("FLEXSERVE_REPO", Path),
        "model_tag": ("FLEXSERVE_MODEL_TAG", str),
        "device": ("FLEXSERVE_DEVICE", str),
        "backend": ("FLEXSERVE_BACKEND", str),
        "triton_url": ("FLEXSERVE_TRITON_URL", str),
        "triton_protocol": ("FLEXSERVE_TRITON_PROTOCOL", str),
        "triton_stats_s": ("FLEXSERVE_TRITON_STATS_S", float),
        "workers": ("FLEXSERVE_WORKERS", int),
        "parallelism": ("FLEXSERVE_PARALLELISM", int),
        "default_budget_ms": ("FLEXSERVE_DEFAULT_BUDGET_MS", float),
        "max_body_bytes": ("FLEXSERVE_MAX_BODY_BYTES", int),
        "watch_s": ("FLEXSERVE_WATCH_S", float),
        "bench_s": ("FLEXSERVE_BENCH_S", float),
        "tie_z": ("FLEXSERVE_TIE_Z", float),
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> GatewayConfig:
        """The configuration the FLEXSERVE_* environment sets; `overrides` (fields) win over it."""
        env = os.environ if environ is None else environ
        kwargs: dict = {}
        for key, (name, kind) in cls.ENVIRONMENT.items():
            if env.get(name):
                try:
                    kwargs[key] = kind(env[name])
                except ValueError:
                    raise ValueError(f"{name}={env[name]!r} is not a valid {kind.__name__}") from None
        return cls(**(kwargs | overrides))

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        workers = default_workers(self.backend) if self.workers is None else self.workers
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        parallelism = max(1, usable_cores() // workers) if self.parallelism is None else self.parallelism
        if parallelism < 1:
            raise ValueError(f"parallelism must be >= 1, got {parallelism}")
        if not 1 <= self.worker <= workers:
            raise ValueError(f"worker must be in [1, {workers}], got {self.worker}")
        object.__setattr__(self, "workers", workers)
        object.__setattr__(self, "parallelism", parallelism)
        if not 0 < self.default_budget_ms <= MAX_LATENCY_BUDGET_MS:
            raise ValueError(
                f"default_budget_ms must be in (0, {MAX_LATENCY_BUDGET_MS:g}], got {self.default_budget_ms}"
            )
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.triton_stats_s < 0:
            raise ValueError(f"triton_stats_s must be >= 0 (0: off), got {self.triton_stats_s}")
        if self.watch_s < 0 or self.bench_s < 0:
            raise ValueError(f"watch_s and bench_s must be >= 0, got {self.watch_s} and {self.bench_s}")
        try:
            PolicyConfig(tie_z=self.tie_z)  # checked at start, not at the first request
        except ValueError as error:
            raise ValueError(f"{error} (FLEXSERVE_TIE_Z)") from None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request's routing inputs, built once by the edge. The values are as the client sent them:
    the policy checks them (and the edge names the header a bad budget came from)."""

    latency_budget_ms: object = None  # None: the gateway's configured default (GatewayConfig.default_budget_ms)
    quality_floor: object = None  # min_accuracy (classifiers) or max_rmse (recommender)
    variant: object = None  # pin one by name
    strict: object = False  # refuse (OverloadError) rather than miss the budget
    elapsed_ms: float = 0.0  # spent before the request reached the server (X-Request-Start)
    arrived_at: float | None = None  # time.perf_counter() when it reached the server; None: when the gateway saw it
    budget_field: str = "latency_budget_ms"  # where the budget came from (a body field or a header): errors name it


class Completion:
    """Comes with every answer. Call it once the response's last byte has left the server: the policy
    then learns the request's whole time in the server, the way out included. Calling it twice is
    harmless; not calling it means the policy learns nothing of this request's overhead (an
    in-process caller with no response to send calls it at once)."""

    __slots__ = ("_arrived_at", "_decision", "_policy")

    def __init__(self, policy: Policy, decision: Decision, arrived_at: float):
        self._policy, self._decision, self._arrived_at = policy, decision, arrived_at

    def __call__(self) -> None:
        if self._decision is not None:
            self._policy.observe_latency(self._decision, (time.perf_counter() - self._arrived_at) * 1e3)
            self._decision = None


class Observer:
    """Receives what happened to each request (the BentoML adapter turns it into Prometheus metrics)."""

    def started(self, family: str, variant: str) -> None: ...

    def finished(self, family: str, variant: str, outcome: str, latency_s: float, budget_ms: float) -> None:
        """One variant run ended: `outcome` budget_met or budget_missed (answered), or error (the run
        failed; the request may be routed again); `budget_ms` is the request's latency budget."""

    def variant_failed(self, family: str, variant: str) -> None: ...

    def routing_state(self, read: Callable[[], dict] | None) -> None:
        """How to read the gateway's live routing state (`Gateway.variants`, what GET /v1/variants
        answers), for an observer that reports it on its own schedule: given once the gateway has
        loaded, None once it has closed."""


class VariantFailed(FlexServeError):
    """A variant's run raised or answered NaN (the gateway routes the request again)."""


def resolve_repository(config: GatewayConfig) -> Path:
    if config.model_tag:
        import bentoml  # only for a store tag

        try:
            return Path(bentoml.models.get(config.model_tag).path)
        except bentoml.exceptions.NotFound as error:
            raise RepositoryError(
                f"no model {config.model_tag!r} in the BentoML store ({error}): {BUILD_HINT}"
            ) from None
    return config.repo


class Generation:
    """One repository version, loaded: adapters, sessions, policies. Requests hold it from routing to
    their last model run; once retired (a newer version is live) it closes with its last request."""

    def __init__(
        self,
        source: Path,
        config: GatewayConfig,
        executor: Executor,
        lock: threading.Lock,
        clock: Callable[[], float],
        previous: Generation | None = None,
    ):
        """`previous`: the generation served before, whose sessions of unchanged files and whose
        learned latency state carry over (a reload costs only what changed)."""
        self.repo: Repository = load_repository(source)  # refuses any file whose sha256 differs
        self.directory = self.repo.root.resolve()
        self.version = self.directory.name if version_of(source) else "unversioned"  # the one loaded
        repo = self.repo
        self.families: dict[str, Family] = {
            name: family_adapter(name, repo.family(name), lambda artifact, n=name: repo.artifact(n, artifact))
            for name in repo.families
        }
        rng, families = np.random.default_rng(0), self.families  # not `self`: no cycle to keep it past its close

        def warmup(family: str) -> list[dict[str, np.ndarray]]:
            rows = {1, repo.family(family).rows_per_request}
            return [families[family].typical_feeds(r, rng) for r in sorted(rows)]

        local = OnnxRuntimeBackend(
            repo, repo.families, device=config.device, warmup=warmup, previous=previous.local if previous else None
        )
        self.local = local
        if config.backend == "triton":
            from serving.backends.triton import FailoverBackend, TritonBackend

            outputs = {v.name: repo.family(f).outputs for f in repo.families for v in repo.variants(f)}
            # Triton's statistics, read every `triton_stats_s`, add the other gateway processes' work at
            # Triton to `executor`, weighed by this process's share of the capacity they all plan on.
            triton = TritonBackend(
                config.triton_url,
                outputs,
                protocol=config.triton_protocol,
                executor=executor,
                stats_interval_s=config.triton_stats_s,
                stats_share=1.0 / config.workers,
            )
            self.backend = FailoverBackend(triton, local)
        else:
            self.backend = local
        self.policies: dict[str, Policy] = {
            family: policy_from_manifest(
                family,
                repo.family(family),
                executors={"local": executor},
                config=PolicyConfig(tie_z=config.tie_z),
                clock=clock,
                lock=lock,
            )
            for family in repo.families
        }
        for family, policy in self.policies.items():
            if previous is not None and family in previous.policies:
                policy.keep_learned(previous.policies[family])
        self._in_flight = 0
        self._retired = self._closed = False
        self._count = threading.Lock()

    def start(self) -> Generation:
        self.backend.start()
        return self

    def enter(self) -> bool:
        """Count a request in; False once retired (the caller takes the live generation instead)."""
        with self._count:
            if self._retired:
                return False
            self._in_flight += 1
            return True

    def exit(self) -> None:
        with self._count:
            self._in_flight -= 1
            close = self._retired and self._in_flight == 0 and not self._closed
            self._closed = self._closed or close
        if close:  # off the event loop: a Triton backend's close joins its health thread
            threading.Thread(target=self.backend.close, name="flexserve-close-version", daemon=True).start()

    def retire(self) -> None:
        """No new requests come here; close once the last one in flight has finished."""
        with self._count:
            self._retired = True
            close = self._in_flight == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self.backend.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def family(self, name: str) -> Family:
        family = self.families.get(name)
        if family is None:
            raise UnknownFamilyError(name, sorted(self.families))
        return family


class Gateway:
    """Every family of the live repository version, routed by budget, run in-process on ONNX Runtime
    (or on Triton), reloaded without downtime when a new version goes live."""

    def __init__(
        self,
        config: GatewayConfig = GatewayConfig(),
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.observer = observer or Observer()
        self.source = resolve_repository(config)
        self.executor = Executor(parallelism=config.parallelism)
        self._policy_lock = threading.Lock()
        self._clock = clock
        self._swap = threading.Lock()  # one reload at a time
        self._failed_dir: Path | None = None  # a version that failed to load: not retried until another goes live
        self._live = self._load()
        self._pool = ThreadPoolExecutor(config.parallelism, thread_name_prefix="flexserve-model")
        self._closed = False
        self._stop = threading.Event()
        self._watcher = None
        if config.watch_s > 0 and not config.model_tag:
            self._watcher = threading.Thread(target=self._watch, name="flexserve-repository-watch", daemon=True)
            self._watcher.start()
        self.observer.routing_state(self.variants)

    # -- lifecycle --------------------------------------------------------------------------
    def _load(self, previous: Generation | None = None) -> Generation:
        return Generation(self.source, self.config, self.executor, self._policy_lock, self._clock, previous).start()

    @property
    def generation(self) -> Generation:
        """The live generation: what new requests are routed in."""
        return self._live

    @property
    def repo(self) -> Repository:
        return self._live.repo

    @property
    def version(self) -> str:
        return self._live.version

    @property
    def policies(self) -> dict[str, Policy]:
        return self._live.policies

    @property
    def families(self) -> dict[str, Family]:
        return self._live.families

    @property
    def backend(self):
        return self._live.backend

    def reload(self) -> dict:
        """Load the live repository version if it is not the one served, and switch to it: new
        requests go to it, the old version closes when its requests have finished."""
        with self._swap:
            old = self._live
            target = live_dir(self.source).resolve()
            if target == old.directory or self._closed:
                return {"version": old.version, "reloaded": False}
            started = time.perf_counter()
            try:
                new = self._load(previous=old)
            except Exception:
                self._failed_dir = target
                raise
            self._failed_dir = None
            self._live = new
            old.retire()
        log.warning(
            "serving repository version %s (was %s), loaded in %.1f s",
            new.version,
            old.version,
            time.perf_counter() - started,
        )
        return {"version": new.version, "previous": old.version, "reloaded": True}

    def _watch(self) -> None:
        while not self._stop.wait(self.config.watch_s):
            if live_dir(self.source).resolve() == self._failed_dir:
                continue  # logged once; tried again when another version goes live, or on POST /v1/admin/reload
            try:
                self.reload()
            except Exception as error:  # a broken new version: keep serving the one loaded
                log.error(
                    "the new repository version could not be loaded (%s); still serving %s", error, self._live.version
                )

    def ready(self) -> bool:
        """Sessions loaded and not closed."""
        return not self._closed and self._live.backend.healthy()

    def close(self) -> None:
        self._stop.set()
        self.observer.routing_state(None)
        with self._swap:  # after any reload under way: nothing is loaded once closed
            self._closed = True
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._live.retire()

    # -- requests ---------------------------------------------------------------------------
    def family(self, name: str) -> Family:
        return self._live.family(name)

    def _enter(self) -> Generation:
        """The live generation, counted in: a reload may retire it meanwhile, but it stays open until
        this request calls `exit()`."""
        while True:
            if self._closed:
                raise OverloadError("the gateway is shutting down", retry_after_s=1.0)
            generation = self._live
            if generation.enter():
                return generation
            # retired between the read and the count: a newer one is live; take that

    async def infer(self, family: str, body: Mapping, request: RequestContext) -> tuple[dict, Completion]:
        """A friendly JSON request -> (the family's answer with the routing fields, completion)."""
        generation = self._enter()
        try:
            adapter = generation.family(family)
            decoded = adapter.decode(body)
            outputs, meta, done = await self._run(generation, family, decoded, request, "body")
        finally:
            generation.exit()
        return {**adapter.encode(outputs, decoded), **meta}, done

    async def infer_tensors(
        self, family: str, named: Mapping[str, np.ndarray], request: RequestContext
    ) -> tuple[dict[str, np.ndarray], dict, Completion]:
        """Named tensors (the model's inputs, or the family's raw inputs) -> (named outputs, routing
        fields, completion)."""
        generation = self._enter()
        try:
            adapter = generation.family(family)
            outputs, meta, done = await self._run(generation, family, adapter.decode_tensors(named), request, "inputs")
        finally:
            generation.exit()
        names = [spec.name for spec in adapter.section.outputs]
        return dict(zip(names, outputs, strict=True)), meta, done

    async def _run(
        self, generation: Generation, family: str, decoded: Decoded, request: RequestContext, field: str
    ) -> tuple[list[np.ndarray], dict, Completion]:
        """Route and run one request in `generation` (entered by the caller); a variant that fails is
        left out and the request routed again (`field`: what a refusal names when every variant fails)."""
        arrived_at = request.arrived_at or time.perf_counter()
        policy = generation.policies[family]
        budget = self.config.default_budget_ms if request.latency_budget_ms is None else request.latency_budget_ms
        failed: dict[str, VariantFailed] = {}
        while True:
            try:
                decision = self._route(policy, budget, decoded.rows, request, list(failed))
            except InvalidRequestError as error:
                if failed and error.field == policy.floor_field:  # every variant meeting the floor failed on it
                    raise InferenceFailedError.of(family, failed, field, f"GET /v2/models/{family}") from None
                raise
            self.observer.started(family, decision.variant)
            try:
                deadline = None  # strict: Triton drops it from a queue once its budget has run out
                if request.strict:
                    deadline = arrived_at + (decision.budget_ms - request.elapsed_ms) / 1e3
                outputs, service_ms, served_by = await self._execute(generation, decision, decoded.feeds, deadline)
                break
            except VariantFailed as error:
                policy.finish(decision, None)
                self.observer.finished(
                    family, decision.variant, "error", time.perf_counter() - arrived_at, decision.budget_ms
                )
                failed[decision.variant] = error
                if len(failed) >= len(policy.variant_names):
                    raise InferenceFailedError.of(family, failed, field, f"GET /v2/models/{family}") from None
            except BaseException:
                policy.finish(decision, None)
                self.observer.finished(
                    family, decision.variant, "error", time.perf_counter() - arrived_at, decision.budget_ms
                )
                raise
        # Another variant answered, so the request was fine and the ones that failed on it are not:
        # they sit out `bench_s`. (When every variant fails, the request is refused and none is benched.)
        for variant, error in failed.items():
            self._bench(policy, family, variant, error)
        policy.finish(decision, service_ms)
        try:  # what the family fits per request on top of the variant's outputs: in the latency
            outputs = generation.family(family).finish(outputs, decoded, decision.variant)
        except BaseException:
            self.observer.finished(
                family, decision.variant, "error", time.perf_counter() - arrived_at, decision.budget_ms
            )
            raise
        latency_ms = (time.perf_counter() - arrived_at) * 1e3
        met = latency_ms + request.elapsed_ms <= decision.budget_ms  # the client's view, less the way back
        outcome = "budget_met" if met else "budget_missed"
        self.observer.finished(family, decision.variant, outcome, latency_ms / 1e3, decision.budget_ms)
        meta = {
            "variant": decision.variant,
            "backend": served_by,
            "version": generation.version,
            "worker": self.config.worker,
            "latency_ms": round(latency_ms, 3),
            "budget_ms": decision.budget_ms,
            "budget_met": met,
            "reason": decision.reason,
        }
        if failed:
            meta["failed_variants"] = list(failed)
            meta["reason"] = (
                f"{', '.join(failed)} failed and {'are' if len(failed) > 1 else 'is'} benched; " + meta["reason"]
            )
        return outputs, meta, Completion(policy, decision, arrived_at)

    def _route(self, policy: Policy, budget: object, rows: int, request: RequestContext, failed: list[str]) -> Decision:
        try:
            return policy.route(
                budget,
                rows,
                min_quality=request.quality_floor,
                variant=None if failed else request.variant,
                strict=request.strict,
                elapsed_ms=request.elapsed_ms,
                exclude=failed,
            )
        except InvalidRequestError as error:
            if error.field == "latency_budget_ms" and request.budget_field != error.field:
                raise type(error)(request.budget_field, error.problem, error.accepted) from None
            raise

    async def _execute(
        self, generation: Generation, decision: Decision, feeds: dict[str, np.ndarray], deadline: float | None
    ) -> tuple[list[np.ndarray], float, str]:
        """Run the decision's variant on a worker thread. `deadline` (time.perf_counter()): the backend
        gets the time left to it as it starts the run (after any wait for a thread)."""
        loop = asyncio.get_running_loop()

        def run() -> tuple[list[np.ndarray], float, str]:
            timeout_ms = None if deadline is None else (deadline - time.perf_counter()) * 1e3
            return generation.backend.run(decision.variant, feeds, timeout_ms)

        try:
            outputs, service_ms, served_by = await loop.run_in_executor(self._pool, run)
        except (asyncio.CancelledError, KeyboardInterrupt, OverloadError):
            raise  # OverloadError: Triton dropped a strict request whose time ran out (503), not a variant's fault
        except Exception as error:
            raise VariantFailed(f"{type(error).__name__}: {error}") from error
        for output in outputs:
            if output.dtype.kind == "f" and not np.isfinite(output).all():
                raise VariantFailed("its output holds NaN or infinity")
        return outputs, service_ms, served_by

    def _bench(self, policy: Policy, family: str, variant: str, error: Exception) -> None:
        policy.bench(variant, self.config.bench_s)
        self.observer.variant_failed(family, variant)
        log.warning(
            "variant %s failed (%s): benched for %g s, the request is routed again", variant, error, self.config.bench_s
        )

    # -- what it serves ---------------------------------------------------------------------
    def variants(self) -> dict:
        """Per family: the metric, the most accurate variant, the tolerance within which others tie with
        it and those tied for best, the fastest variant for a typical request, the learned overhead, and
        each variant's metric (with its standard error), profiled and live latency estimates, in-flight
        count."""
        generation = self._live
        out = {}
        for family, policy in generation.policies.items():
            section = generation.repo.family(family)
            out[family] = {
                "metric": section.metric,
                "higher_is_better": section.higher_is_better,
                "adapter": generation.families[family].adapter,
                "most_accurate": policy.most_accurate,
                "tolerance": policy.tolerance,
                "tied_for_best": policy.tied_for_best(),
                "fastest": policy.fastest(section.rows_per_request),
                "overhead_ms": round(policy.overhead_ms, 4),
                "variants": policy.snapshot(),
            }
        return {
            "version": generation.version,
            "backend": generation.backend.name,
            "configured_backend": self.config.backend,
            "device": generation.backend.device,
            "worker": self.config.worker,
            "workers": self.config.workers,
            "parallelism": self.config.parallelism,
            "executor_in_flight": self.executor.in_flight,
            "families": out,
        }


class UnknownFamilyError(InvalidRequestError):
    """The repository holds no variant of this family (HTTP 404)."""

    def __init__(self, family: str, families: list[str]):
        super().__init__(
            "family",
            f"{family!r} is not in this model repository",
            f"{', '.join(families)} (train it with `flexserve train --family {family}`, or bring it with "
            "`flexserve import`)",
        )
