"""The gateway's core, free of any web framework: validate a request, route it with the policy,
run the chosen variant on a backend, and shape the answer. `serving/service.py` is the thin
BentoML adapter around it (HTTP, headers, status codes, metrics).

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.errors import InvalidRequestError, RepositoryError
from serving.policy import Decision, Executor, MAX_LATENCY_BUDGET_MS, Policy, policy_from_manifest
from serving.preprocess import Catalog, ImageCodec, TextCodec
from serving.repository import BUILD_HINT, Repository, load_repository

DEFAULT_REPO = Path("artifacts/model_repository")
BACKENDS = ("onnxruntime", "triton")


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class GatewayConfig:
    repo: Path = DEFAULT_REPO
    # A BentoML model store tag (e.g. flexserve-model-repository:latest); wins over `repo`.
    model_tag: str | None = None
    device: str = "auto"  # ONNX Runtime: cuda when onnxruntime-gpu and a GPU are present
    # Concurrent model runs: one per core, one intra-op thread each (as profiled).
    workers: int = field(default_factory=_usable_cores)
    # When a request names no budget: loose enough for the most accurate variant here.
    default_budget_ms: float = 200.0
    backend: str = "onnxruntime"  # or "triton": remote, failing over to in-process ONNX Runtime
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: str = "grpc"  # or "http" (then triton_url is the HTTP port, e.g. 127.0.0.1:8000)

    @classmethod
    def from_env(cls, environ: dict | None = None) -> GatewayConfig:
        env = os.environ if environ is None else environ
        kwargs: dict = {}
        if env.get("FLEXSERVE_REPO"):
            kwargs["repo"] = Path(env["FLEXSERVE_REPO"])
        if env.get("FLEXSERVE_MODEL_TAG"):
            kwargs["model_tag"] = env["FLEXSERVE_MODEL_TAG"]
        for key, name in (("device", "FLEXSERVE_DEVICE"), ("backend", "FLEXSERVE_BACKEND"),
                          ("triton_url", "FLEXSERVE_TRITON_URL"), ("triton_protocol", "FLEXSERVE_TRITON_PROTOCOL")):
            if env.get(name):
                kwargs[key] = env[name]
        for key, name, kind in (("workers", "FLEXSERVE_WORKERS", int),
                                ("default_budget_ms", "FLEXSERVE_DEFAULT_BUDGET_MS", float)):
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
            raise ValueError(f"default_budget_ms must be in (0, {MAX_LATENCY_BUDGET_MS:g}], got {self.default_budget_ms}")


@dataclass(frozen=True)
class RouteOptions:
    """The per-request routing fields every endpoint accepts."""

    latency_budget_ms: object = None
    quality_floor: object = None  # min_accuracy (classifiers) or max_rmse (recommender)
    variant: object = None
    strict: object = False
    # Not body fields. Time spent before the request reached the server (X-Request-Start):
    elapsed_ms: float = 0.0
    # Given, the routing decision is left here ({"policy", "decision"}) for the caller to report the
    # request's latency with `policy.observe_latency` once the response has left; else the gateway
    # reports its own view of it at once.
    deferred: dict | None = None


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
            raise RepositoryError(f"no model {config.model_tag!r} in the BentoML store ({error}): {BUILD_HINT}") from None
    return config.repo


class Gateway:
    """Every family in the repository, routed by budget, run in-process on ONNX Runtime."""

    def __init__(self, config: GatewayConfig = GatewayConfig(), observer: Observer | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.observer = observer or Observer()
        root = resolve_repository(config)
        self.repo: Repository = load_repository(root)  # refuses any file whose sha256 differs
        self._manifest_stamp = self._stamp()
        local = OnnxRuntimeBackend(self.repo, self.repo.families, device=config.device)
        if config.backend == "triton":
            from serving.backends.triton import FailoverBackend, TritonBackend

            outputs = {v.name: self.repo.family(f)["outputs"][0]["name"] for f in self.repo.families
                       for v in self.repo.variants(f)}
            remote = TritonBackend(config.triton_url, outputs, protocol=config.triton_protocol)
            self.backend = FailoverBackend(remote, local)
        else:
            self.backend = local
        self.backend.start()
        self.executor = Executor(parallelism=config.workers)
        lock = threading.Lock()
        self.policies: dict[str, Policy] = {
            family: policy_from_manifest(family, self.repo.family(family), executors={"local": self.executor},
                                         clock=clock, lock=lock)
            for family in self.repo.families}
        self.codecs: dict[str, object] = {}
        for family in self.repo.families:
            section = self.repo.family(family)
            if family == "cnn":
                self.codecs[family] = ImageCodec.from_manifest(section)
            elif family == "rnn":
                self.codecs[family] = TextCodec.from_manifest(section, self.repo.artifact(family, "vocab"))
            elif family == "recsys":
                self.codecs[family] = Catalog.from_manifest(section, self.repo.artifact(family, "catalog"))
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

    # -- endpoints --------------------------------------------------------------------------
    async def classify_image(self, images: object, options: RouteOptions, arrival: float | None = None) -> dict:
        codec = self._codec("cnn")
        feeds = codec.encode(_required(images, "images"))
        outputs, meta = await self._infer("cnn", feeds, len(feeds["IMAGES"]), options, arrival)
        return {"predictions": codec.decode(outputs), **meta}

    async def classify_text(self, texts: object, options: RouteOptions, arrival: float | None = None) -> dict:
        codec = self._codec("rnn")
        feeds = codec.encode(_required(texts, "texts"))
        outputs, meta = await self._infer("rnn", feeds, len(feeds["TOKENS"]), options, arrival)
        return {"predictions": codec.decode(outputs), **meta}

    async def recommend(self, user_id: object, k: object, candidate_item_ids: object, options: RouteOptions,
                        arrival: float | None = None) -> dict:
        catalog = self._codec("recsys")
        feeds, candidates, k = catalog.encode(_required(user_id, "user_id"), 10 if k is None else k, candidate_item_ids)
        outputs, meta = await self._infer("recsys", feeds, len(candidates), options, arrival)
        return {"items": catalog.decode(outputs, candidates, k), **meta}

    def variants(self) -> dict:
        """Per family: each variant's metric, profiled and live latency estimates and in-flight count."""
        out = {}
        for family, policy in self.policies.items():
            section = self.repo.family(family)
            out[family] = {"metric": section["metric"], "higher_is_better": section["higher_is_better"],
                           "overhead_ms": round(policy.overhead_ms, 4), "variants": policy.snapshot()}
        return {"backend": self.backend.name, "configured_backend": self.config.backend, "device": self.backend.device,
                "workers": self.config.workers,
                "executor_in_flight": self.executor.in_flight, "families": out}

    # -- internals --------------------------------------------------------------------------
    def _codec(self, family: str):
        codec = self.codecs.get(family)
        if codec is None:
            raise UnknownFamilyError(family, self.repo.families)
        return codec

    def _route(self, family: str, batch_rows: int, options: RouteOptions) -> Decision:
        policy = self.policies[family]
        budget = self.config.default_budget_ms if options.latency_budget_ms is None else options.latency_budget_ms
        floor = options.quality_floor
        if not isinstance(options.strict, bool):
            raise InvalidRequestError("strict", f"got {options.strict!r}", "true or false")
        if options.variant is not None and not isinstance(options.variant, str):
            raise InvalidRequestError("variant", f"got {options.variant!r}", ", ".join(policy.variant_names))
        return policy.route(budget, batch_rows, min_quality=floor, variant=options.variant, strict=options.strict,
                            elapsed_ms=min(options.elapsed_ms, MAX_LATENCY_BUDGET_MS))

    async def _infer(self, family: str, feeds: dict[str, np.ndarray], batch_rows: int, options: RouteOptions,
                     arrival: float | None) -> tuple[np.ndarray, dict]:
        started = arrival or time.perf_counter()
        decision = self._route(family, batch_rows, options)
        policy = self.policies[family]
        self.observer.started(family, decision.variant)
        loop = asyncio.get_running_loop()
        try:
            outputs, service_ms, served_by = await loop.run_in_executor(self._pool, self.backend.run,
                                                                        decision.variant, feeds)
        except BaseException:
            policy.finish(decision, None)
            self.observer.finished(family, decision.variant, "error", time.perf_counter() - started)
            raise
        latency_ms = (time.perf_counter() - started) * 1e3
        if options.deferred is None:
            policy.finish(decision, service_ms, latency_ms)
        else:
            policy.finish(decision, service_ms)
            options.deferred.update(policy=policy, decision=decision)
        met = latency_ms + options.elapsed_ms <= decision.budget_ms  # the client's view, less the way back
        self.observer.finished(family, decision.variant, "budget_met" if met else "budget_missed", latency_ms / 1e3)
        return outputs, {"variant": decision.variant, "backend": served_by,
                         "latency_ms": round(latency_ms, 3), "budget_ms": decision.budget_ms, "budget_met": met,
                         "reason": decision.reason}


class UnknownFamilyError(InvalidRequestError):
    """The repository holds no variant of this family (HTTP 404)."""

    def __init__(self, family: str, families: list[str]):
        super().__init__("family", f"{family!r} is not in this model repository",
                         f"{', '.join(families)} (train it with `flexserve train --family {family}`)")


def _required(value: object, field_name: str) -> object:
    if value is None:
        raise InvalidRequestError(field_name, "is missing", "see the API docs at /docs")
    return value

