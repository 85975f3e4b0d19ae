"""The gateway's core, free of any web framework: decode a request, route it with the policy, run
the chosen variant on a backend, and shape the answer. `serving/service.py` is the thin BentoML
adapter around it (HTTP, headers, status codes, metrics).

A request's way through: the edge builds one `RequestContext` (budget, time before the server,
arrival time); the gateway decodes the payload, asks the policy (the one place that checks the
routing fields), runs the variant, and returns the answer with a `Completion` that the edge calls
once the response has left, so the policy learns the request's whole time in the server.

All variants of all families share one executor: `workers` threads (one per core by default),
each running one request on one intra-op thread, as profiled. The policies of all families
share the executor's state, so a recommender request queued in front of an image request
counts in the image request's prediction.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from contract.manifest import BUILD_HINT, DEFAULT_REPOSITORY
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.errors import InvalidRequestError, RepositoryError
from serving.policy import (
    DEFAULT_LATENCY_BUDGET_MS,
    MAX_LATENCY_BUDGET_MS,
    Decision,
    Executor,
    Policy,
    policy_from_manifest,
)
from serving.preprocess import codec_for
from serving.repository import Repository, load_repository

BACKENDS = ("onnxruntime", "triton")
MAX_BODY_BYTES = 1 << 20  # 64 images of 28x28 as JSON is ~300 KB


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class GatewayConfig:
    repo: Path = DEFAULT_REPOSITORY
    # A BentoML model store tag (e.g. flexserve-model-repository:latest); wins over `repo`.
    model_tag: str | None = None
    device: str = "auto"  # ONNX Runtime: cuda when onnxruntime-gpu and a GPU are present
    # Concurrent model runs: one per core, one intra-op thread each (as profiled).
    workers: int = field(default_factory=_usable_cores)
    # The budget of a request that names none.
    default_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS
    backend: str = "onnxruntime"  # or "triton": remote, failing over to in-process ONNX Runtime
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: str = "grpc"  # or "http" (then triton_url is the HTTP port, e.g. 127.0.0.1:8000)
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get 413 before they are read

    ENVIRONMENT: ClassVar[dict[str, tuple[str, type]]] = {  # field -> (variable, type)
        "repo": ("FLEXSERVE_REPO", Path),
        "model_tag": ("FLEXSERVE_MODEL_TAG", str),
        "device": ("FLEXSERVE_DEVICE", str),
        "backend": ("FLEXSERVE_BACKEND", str),
        "triton_url": ("FLEXSERVE_TRITON_URL", str),
        "triton_protocol": ("FLEXSERVE_TRITON_PROTOCOL", str),
        "workers": ("FLEXSERVE_WORKERS", int),
        "default_budget_ms": ("FLEXSERVE_DEFAULT_BUDGET_MS", float),
        "max_body_bytes": ("FLEXSERVE_MAX_BODY_BYTES", int),
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        env = os.environ if environ is None else environ
        kwargs: dict = {}
        for key, (name, kind) in cls.ENVIRONMENT.items():
            if env.get(name):
                try:
                    kwargs[key] = kind(env[name])
                except ValueError:
                    raise ValueError(f"{name}={env[name]!r} is not a valid {kind.__name__}") from None
        return cls(**kwargs)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 < self.default_budget_ms <= MAX_LATENCY_BUDGET_MS:
            raise ValueError(
                f"default_budget_ms must be in (0, {MAX_LATENCY_BUDGET_MS:g}], got {self.default_budget_ms}"
            )
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")


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

    def finished(self, family: str, variant: str, outcome: str, latency_s: float) -> None: ...


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


class Gateway:
    """Every family in the repository, routed by budget, run in-process on ONNX Runtime (or on Triton)."""

    def __init__(
        self,
        config: GatewayConfig = GatewayConfig(),
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.observer = observer or Observer()
        self.repo: Repository = load_repository(resolve_repository(config))  # refuses any file whose sha256 differs
        self._manifest_stamp = self._stamp()
        local = OnnxRuntimeBackend(self.repo, self.repo.families, device=config.device)
        if config.backend == "triton":
            from serving.backends.triton import FailoverBackend, TritonBackend

            outputs = {
                v.name: self.repo.family(f).outputs[0].name for f in self.repo.families for v in self.repo.variants(f)
            }
            remote = TritonBackend(config.triton_url, outputs, protocol=config.triton_protocol)
            self.backend = FailoverBackend(remote, local)
        else:
            self.backend = local
        self.backend.start()
        self.executor = Executor(parallelism=config.workers)
        lock = threading.Lock()
        self.policies: dict[str, Policy] = {
            family: policy_from_manifest(
                family, self.repo.family(family), executors={"local": self.executor}, clock=clock, lock=lock
            )
            for family in self.repo.families
        }
        # A family without a codec (none yet beyond the built-ins) is not served: its requests get 404.
        self.codecs = {f: codec for f in self.repo.families if (codec := codec_for(self.repo, f)) is not None}
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="flexserve-model")
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    def _stamp(self) -> tuple[float, int] | None:
        try:
            stat = (self.repo.root / "manifest.json").stat()
            return stat.st_mtime, stat.st_size
        except OSError:
            return None

    def ready(self) -> bool:
        """Sessions loaded, not closed, and the repository on disk is still the one loaded."""
        return not self._closed and self.backend.healthy() and self._stamp() == self._manifest_stamp

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.backend.close()

    # -- endpoints: (answer, completion) ------------------------------------------------------
    async def classify_image(self, images: object, request: RequestContext) -> tuple[dict, Completion]:
        codec = self._codec("cnn")
        feeds = codec.encode(_required(images, "images"))
        outputs, meta, done = await self._infer("cnn", feeds, len(feeds["IMAGES"]), request)
        return {"predictions": codec.decode(outputs), **meta}, done

    async def classify_text(self, texts: object, request: RequestContext) -> tuple[dict, Completion]:
        codec = self._codec("rnn")
        feeds = codec.encode(_required(texts, "texts"))
        outputs, meta, done = await self._infer("rnn", feeds, len(feeds["TOKENS"]), request)
        return {"predictions": codec.decode(outputs), **meta}, done

    async def recommend(
        self, user_id: object, k: object, candidate_item_ids: object, request: RequestContext
    ) -> tuple[dict, Completion]:
        catalog = self._codec("recsys")
        feeds, candidates, k = catalog.encode(_required(user_id, "user_id"), 10 if k is None else k, candidate_item_ids)
        outputs, meta, done = await self._infer("recsys", feeds, len(candidates), request)
        return {"items": catalog.decode(outputs, candidates, k), **meta}, done

    def variants(self) -> dict:
        """Per family: the metric, the fastest variant for a typical request, the learned overhead, and
        each variant's metric, profiled and live latency estimates and in-flight count."""
        out = {}
        for family, policy in self.policies.items():
            section = self.repo.family(family)
            out[family] = {
                "metric": section.metric,
                "higher_is_better": section.higher_is_better,
                "most_accurate": policy.most_accurate,
                "fastest": policy.fastest(section.rows_per_request),
                "overhead_ms": round(policy.overhead_ms, 4),
                "variants": policy.snapshot(),
            }
        return {
            "backend": self.backend.name,
            "configured_backend": self.config.backend,
            "device": self.backend.device,
            "workers": self.config.workers,
            "executor_in_flight": self.executor.in_flight,
            "families": out,
        }

    # -- internals --------------------------------------------------------------------------
    def _codec(self, family: str):
        codec = self.codecs.get(family)
        if codec is None:
            raise UnknownFamilyError(family, self.repo.families)
        return codec

    async def _infer(
        self, family: str, feeds: dict[str, np.ndarray], batch_rows: int, request: RequestContext
    ) -> tuple[np.ndarray, dict, Completion]:
        arrived_at = request.arrived_at or time.perf_counter()
        policy = self.policies[family]
        budget = self.config.default_budget_ms if request.latency_budget_ms is None else request.latency_budget_ms
        try:
            decision = policy.route(
                budget,
                batch_rows,
                min_quality=request.quality_floor,
                variant=request.variant,
                strict=request.strict,
                elapsed_ms=request.elapsed_ms,
            )
        except InvalidRequestError as error:
            if error.field == "latency_budget_ms" and request.budget_field != error.field:
                raise InvalidRequestError(request.budget_field, error.problem, error.accepted) from None
            raise
        self.observer.started(family, decision.variant)
        loop = asyncio.get_running_loop()
        try:
            outputs, service_ms, served_by = await loop.run_in_executor(
                self._pool, self.backend.run, decision.variant, feeds
            )
        except BaseException:
            policy.finish(decision, None)
            self.observer.finished(family, decision.variant, "error", time.perf_counter() - arrived_at)
            raise
        policy.finish(decision, service_ms)
        latency_ms = (time.perf_counter() - arrived_at) * 1e3
        met = latency_ms + request.elapsed_ms <= decision.budget_ms  # the client's view, less the way back
        self.observer.finished(family, decision.variant, "budget_met" if met else "budget_missed", latency_ms / 1e3)
        meta = {
            "variant": decision.variant,
            "backend": served_by,
            "latency_ms": round(latency_ms, 3),
            "budget_ms": decision.budget_ms,
            "budget_met": met,
            "reason": decision.reason,
        }
        return outputs, meta, Completion(policy, decision, arrived_at)


class UnknownFamilyError(InvalidRequestError):
    """The repository holds no variant of this family (HTTP 404)."""

    def __init__(self, family: str, families: list[str]):
        super().__init__(
            "family",
            f"{family!r} is not in this model repository",
            f"{', '.join(families)} (train it with `flexserve train --family {family}`)",
        )


def _required(value: object, field_name: str) -> object:
    if value is None:
        raise InvalidRequestError(field_name, "is missing", "see the API docs at /docs")
    return value
