"""The in-process backend: one ONNX Runtime session per variant, run from the gateway's threads.

Sessions are built with the settings the variants were profiled with (the manifest's
`latency_profile`: one intra-op thread per request on CPU), so the policy's predictions hold.
`device="auto"` takes the CUDA execution provider when onnxruntime-gpu and a GPU are present.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from contract.sessions import open_session, providers_for
from serving.repository import Repository, check_signature

Feeds = dict[str, np.ndarray]


class OnnxRuntimeBackend:
    """Runs any variant of the repository's families in this process."""

    name = "onnxruntime"

    def __init__(
        self,
        repo: Repository,
        families: list[str],
        device: str = "auto",
        threads: int | None = None,
        warmup: Callable[[str], list[Feeds]] | None = None,
        previous: OnnxRuntimeBackend | None = None,
    ):
        """`warmup(family)`: feeds each session runs once at start (the first run at a new size
        allocates, and that cost must not land on a request); none by default. `previous`: the backend
        of the version served before; its sessions of files with the same sha256 are reused, warm."""
        self.repo, self.families = repo, families
        self.providers = providers_for(device)
        settings = (repo.manifest.latency_profile or {}).get("settings", {})
        self.threads = threads or int(settings.get("threads", 1))
        self.warmup = warmup or (lambda family: [])
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._by_sha256: dict[str, ort.InferenceSession] = {}
        self._previous = previous

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def start(self) -> None:
        previous, self._previous = self._previous, None
        same_settings = previous is not None and (previous.threads, previous.providers) == (
            self.threads,
            self.providers,
        )
        reusable = previous._by_sha256 if same_settings else {}
        for family in self.families:
            feeds = None
            for variant in self.repo.variants(family):
                sess = reusable.get(variant.sha256)
                if sess is None:
                    sess = open_session(variant.path, self.threads, self.providers)
                    feeds = self.warmup(family) if feeds is None else feeds
                    for feed in feeds:
                        sess.run(None, feed)
                check_signature(self.repo, family, variant, sess)
                self._sessions[variant.name] = self._by_sha256[variant.sha256] = sess

    def run(self, variant: str, feeds: Feeds, timeout_ms: float | None = None) -> tuple[list[np.ndarray], float, str]:
        """(outputs, service ms, who served) for one batch, from a worker thread. `timeout_ms` is for
        backends with a queue (Triton); a run here starts at once and is not stopped."""
        sess = self._sessions[variant]
        start = time.perf_counter()
        outputs = sess.run(None, feeds)
        return outputs, (time.perf_counter() - start) * 1e3, self.name

    def healthy(self) -> bool:
        return bool(self._sessions)

    def close(self) -> None:
        self._sessions.clear()
        self._by_sha256.clear()
