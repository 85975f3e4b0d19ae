"""The remote backend: run variants on Triton (tritonclient, gRPC by default, HTTP as an option),
and fail over to in-process ONNX Runtime whenever Triton is unreachable, slow or erroring.

Health is checked by a background thread (`is_server_ready` every `health_interval_s`), never
on a request's path. A request that Triton fails (connection refused, timeout, a server
error) is run again in-process at once, so a client sees no error; Triton is marked down and
traffic returns to it when the health check sees it ready again.

Deadlines: `run(..., timeout_ms=...)` sends the time left of a request's budget as Triton's
per-request `timeout` (microseconds, tritonclient's `infer(timeout=...)` over gRPC and HTTP; at
least 1 us, since 0 means none). The variant's queue policy (`allow_timeout_override`, see
contract/triton_config.py) makes Triton drop the request if it is still queued when that runs out:
`TritonTimeoutError` (an `OverloadError`: HTTP 503 + Retry-After at the edge). Triton is healthy
then, so it is not marked down, and the request is not run in-process: it could not make it there
either. Triton rejects an expired request when its scheduler next looks at the queue (when an
instance frees up), not at the deadline itself; one already running is never stopped.

The shared queue: several gateway processes may send to one Triton, and each one's policy sees only
its own requests in flight. Every `stats_interval_s` a poller thread (not a request's path) reads
Triton's per-model statistics and sets the other clients' load on the variants' `executor` as its
`ExternalLoad`, which the policy counts when it predicts the wait (serving/triton/statistics.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np

from contract.dtypes import dtype
from contract.manifest import TensorSpec
from contract.triton_config import TIMEOUT_EXPIRED
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.errors import OverloadError
from serving.policy import Executor
from serving.triton.statistics import (
    STATS_INTERVAL_S,
    STATS_SHARE,
    STATS_TIMEOUT_S,
    StatisticsPoller,
    own_traffic,
)

log = logging.getLogger("flexserve.triton")
PROTOCOLS = ("grpc", "http")
# Triton's words (gRPC UNAVAILABLE, HTTP 503) for a request its queue dropped past its `timeout`.


class TritonTimeoutError(OverloadError):
    """Triton dropped the request from the variant's queue: the time left of its budget ran out there."""


def timeout_us(timeout_ms: float) -> int:
    """Triton's per-request `timeout`: whole microseconds, at least 1 (0 would mean no timeout)."""
    return max(1, int(timeout_ms * 1e3))


def _new_client(protocol: str, url: str, timeout_s: float):
    """(a tritonclient InferenceServerClient, its module)."""
    if protocol == "grpc":
        import tritonclient.grpc as module

        return module.InferenceServerClient(url), module
    import tritonclient.http as module

    return module.InferenceServerClient(url, network_timeout=timeout_s, connection_timeout=timeout_s), module


class TritonBackend:
    """Runs a variant model by name on a Triton server.

    `executor`: where the variants' requests are counted by the routing policy (one `Executor` for
    all of them, or variant -> `Executor`); the statistics poller sets the other clients' load at
    Triton there. `stats_interval_s`: how often it reads Triton's statistics (0: never; then no
    poller, and nothing recorded on the request path). `stats_share`: the share of the other
    clients' load that competes for the executor's slots (see serving/triton/statistics.py)."""

    name = "triton"

    def __init__(
        self,
        url: str,
        outputs: dict[str, Sequence[TensorSpec]],
        protocol: str = "grpc",
        timeout_s: float = 5.0,
        *,
        executor: Executor | Mapping[str, Executor] | None = None,
        stats_interval_s: float = STATS_INTERVAL_S,
        stats_share: float = STATS_SHARE,
    ):
        self.outputs = outputs  # variant -> its output tensors (the manifest's specs)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if not stats_interval_s >= 0:
            raise ValueError(f"stats_interval_s must be >= 0 (0: off), got {stats_interval_s}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        # The HTTP client (geventhttpclient) must stay on the thread that made it: one per thread.
        self._local = threading.local()
        self._generation = 0
        self._shared = self._connect() if protocol == "grpc" else None
        self.statistics: StatisticsPoller | None = None
        self._own = None
        if stats_interval_s > 0:
            self._own = own_traffic(url)
            targets = dict(executor) if isinstance(executor, Mapping) else dict.fromkeys(outputs, executor)
            fetch, close = self._statistics_client()
            self.statistics = StatisticsPoller(
                fetch, targets, self._own, interval_s=stats_interval_s, share=stats_share, on_stop=close
            )

    def _statistics_client(self):
        """(fetch, close) for the poller's thread: its own client, with a deadline on every call, made
        again after a failure (a gRPC channel that saw the server die backs off for seconds)."""
        held: list = []

        def close() -> None:
            while held:
                try:
                    held.pop().close()
                except Exception:
                    pass

        def fetch() -> Mapping:
            if not held:
                held.append(_new_client(self.protocol, self.url, STATS_TIMEOUT_S)[0])
            try:
                if self.protocol == "grpc":
                    return held[0].get_inference_statistics(as_json=True, client_timeout=STATS_TIMEOUT_S)
                return held[0].get_inference_statistics()
            except Exception:
                close()
                raise

        return fetch, close

    def start(self) -> None:
        """Start the statistics poller, if there is one."""
        if self.statistics is not None:
            self.statistics.start()

    @property
    def _client(self):
        if self._shared is not None:
            return self._shared
        if getattr(self._local, "generation", -1) != self._generation:
            self._local.client, self._local.generation = self._connect(), self._generation
        return self._local.client

    def _connect(self):
        client, self._module = _new_client(self.protocol, self.url, self.timeout_s)
        return client

    def reconnect(self) -> None:
        """Fresh connections: a gRPC channel that saw the server die backs off for seconds before retrying."""
        if self._shared is not None:
            old, self._shared = self._shared, self._connect()
            try:
                old.close()
            except Exception:
                pass
        else:
            self._generation += 1  # each thread reconnects on its next use

    def ready(self) -> bool:
        try:
            if self.protocol == "grpc":
                return bool(self._client.is_server_ready(client_timeout=1.0))
            return bool(self._client.is_server_ready())
        except Exception:
            return False

    def run(
        self, variant: str, feeds: dict[str, np.ndarray], timeout_ms: float | None = None
    ) -> tuple[list[np.ndarray], float, str]:
        """Run `variant` on Triton. `timeout_ms`: the time left of the request's budget, sent as
        Triton's `timeout`; `TritonTimeoutError` if Triton drops the request for it."""
        from tritonclient.utils import InferenceServerException

        client = self._client  # first, as it also picks the tritonclient module (`_module`) on first use
        inputs = []
        for name, value in feeds.items():
            value = value.reshape(-1, 1) if value.ndim == 1 else value  # Triton's per-row scalars are [n, 1]
            tensor = self._module.InferInput(name, list(value.shape), dtype(value.dtype).triton)
            tensor.set_data_from_numpy(np.ascontiguousarray(value))
            inputs.append(tensor)
        limit = {} if timeout_ms is None else {"timeout": timeout_us(timeout_ms)}
        start = time.perf_counter()
        try:
            if self.protocol == "grpc":
                result = client.infer(variant, inputs, client_timeout=self.timeout_s, **limit)
            else:
                result = client.infer(variant, inputs, **limit)
        except InferenceServerException as error:
            if timeout_ms is not None and TIMEOUT_EXPIRED in (error.message() or ""):
                raise TritonTimeoutError(
                    f"{variant}: Triton dropped the request from its queue: the {max(timeout_ms, 0.0):.3g} ms left of "
                    f"its budget ran out there ({TIMEOUT_EXPIRED}); retry later, or send a looser budget",
                    retry_after_s=1.0,
                ) from None
            raise
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if self._own is not None:
            self._own.record(variant, elapsed_ms)  # this process's own share of the statistics
        # Per-row scalars travel as [n, 1]; the model (and in-process ONNX Runtime) says [n].
        outputs = [result.as_numpy(spec.name) for spec in self.outputs[variant]]
        return (
            [o.reshape(-1) if len(s.shape) == 1 else o for o, s in zip(outputs, self.outputs[variant], strict=True)],
            elapsed_ms,
            self.name,
        )

    def close(self) -> None:
        if self.statistics is not None:
            self.statistics.stop()  # and takes back the load it set on the executor
        try:
            (self._shared or getattr(self._local, "client", None) or _Nothing()).close()
        except Exception:
            pass


class _Nothing:
    def close(self) -> None: ...


class FailoverBackend:
    """Triton first; in-process ONNX Runtime when Triton is down. `run` says who served."""

    def __init__(self, primary: TritonBackend, fallback: OnnxRuntimeBackend, health_interval_s: float = 0.5):
        self.primary, self.fallback = primary, fallback
        self.health_interval_s = health_interval_s
        self._up = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="flexserve-triton-health", daemon=True)

    @property
    def name(self) -> str:
        return self.primary.name if self._up else self.fallback.name

    @property
    def device(self) -> str:
        return self.fallback.device

    def start(self) -> None:
        self.fallback.start()
        start = getattr(self.primary, "start", None)  # TritonBackend's statistics poller
        if start is not None:
            start()
        self._up = self.primary.ready()
        if not self._up:
            log.warning("Triton at %s is not ready: serving in-process until it is", self.primary.url)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.health_interval_s):
            if not self._up:
                self.primary.reconnect()  # no request uses it while it is down
            ready = self.primary.ready()
            if ready != self._up:
                log.warning("Triton at %s is %s", self.primary.url, "back: traffic returns to it" if ready else "down")
            self._up = ready

    def run(
        self, variant: str, feeds: dict[str, np.ndarray], timeout_ms: float | None = None
    ) -> tuple[list[np.ndarray], float, str]:
        """`timeout_ms`: the time left of the request's budget, for Triton (see `TritonBackend.run`). A
        request Triton dropped for it raises `TritonTimeoutError`: Triton stays up, nothing runs in-process."""
        if self._up:
            try:
                return self.primary.run(variant, feeds, timeout_ms=timeout_ms)
            except TritonTimeoutError:
                raise
            except Exception as error:
                self._up = False
                log.warning("Triton failed on %s (%s): failing over to in-process ONNX Runtime", variant, error)
        return self.fallback.run(variant, feeds)

    def healthy(self) -> bool:
        return self.fallback.healthy()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.primary.close()
        self.fallback.close()
