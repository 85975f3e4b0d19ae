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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from contract.dtypes import dtype
from contract.manifest import TensorSpec
from contract.triton_config import TIMEOUT_EXPIRED
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.errors import OverloadError

log = logging.getLogger("flexserve.triton")
PROTOCOLS = ("grpc", "http")
# Triton's words (gRPC UNAVAILABLE, HTTP 503) for a request its queue dropped past its `timeout`.


class TritonTimeoutError(OverloadError):
    """Triton dropped the request from the variant's queue: the time left of its budget ran out there."""


def timeout_us(timeout_ms: float) -> int:
    """Triton's per-request `timeout`: whole microseconds, at least 1 (0 would mean no timeout)."""
    return max(1, int(timeout_ms * 1e3))


class TritonBackend:
    """Runs a variant model by name on a Triton server."""

    name = "triton"

    def __init__(
        self, url: str, outputs: dict[str, Sequence[TensorSpec]], protocol: str = "grpc", timeout_s: float = 5.0
    ):
        self.outputs = outputs  # variant -> its output tensors (the manifest's specs)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        # The HTTP client (geventhttpclient) must stay on the thread that made it: one per thread.
        self._local = threading.local()
        self._generation = 0
        self._shared = self._connect() if protocol == "grpc" else None

    @property
    def _client(self):
        if self._shared is not None:
            return self._shared
        if getattr(self._local, "generation", -1) != self._generation:
            self._local.client, self._local.generation = self._connect(), self._generation
        return self._local.client

    def _connect(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as module

            client = module.InferenceServerClient(self.url)
        else:
            import tritonclient.http as module

            client = module.InferenceServerClient(
                self.url, network_timeout=self.timeout_s, connection_timeout=self.timeout_s
            )
        self._module = module
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
        # Per-row scalars travel as [n, 1]; the model (and in-process ONNX Runtime) says [n].
        outputs = [result.as_numpy(spec.name) for spec in self.outputs[variant]]
        return (
            [o.reshape(-1) if len(s.shape) == 1 else o for o, s in zip(outputs, self.outputs[variant], strict=True)],
            elapsed_ms,
            self.name,
        )

    def close(self) -> None:
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
