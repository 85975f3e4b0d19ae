"""The in-process backend: one ONNX Runtime session per variant, run from the gateway's threads.

Sessions are built with the settings the variants were profiled with (the manifest's
`latency_profile`: one intra-op thread per request on CPU), so the policy's predictions hold.
`device="auto"` takes the CUDA execution provider when onnxruntime-gpu and a GPU are present.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from contract.manifest import FamilySection
from contract.sessions import open_session, providers_for
from serving.repository import Repository, check_signature


def _warmup_feeds(section: FamilySection) -> list[dict[str, np.ndarray]]:
    """Ones (a valid id, length and pixel for every family) at one row and at a typical request's
    rows: the first run at a new size allocates, and that cost must not land on a request."""
    feeds = []
    for rows in sorted({1, section.rows_per_request}):
        feed = {}
        for spec in section.inputs:
            shape = [rows] + [1 if d == -1 else d for d in spec.shape[1:]]
            feed[spec.name] = np.ones(shape, dtype=spec.dtype)
        feeds.append(feed)
    return feeds


class OnnxRuntimeBackend:
    """Runs any variant of the repository's families in this process."""

    name = "onnxruntime"

    def __init__(self, repo: Repository, families: list[str], device: str = "auto", threads: int | None = None):
        self.repo, self.families = repo, families
        self.providers = providers_for(device)
        settings = (repo.manifest.latency_profile or {}).get("settings", {})
        self.threads = threads or int(settings.get("threads", 1))
        self._sessions: dict[str, ort.InferenceSession] = {}

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def start(self) -> None:
        for family in self.families:
            for variant in self.repo.variants(family):
                sess = open_session(variant.path, self.threads, self.providers)
                check_signature(self.repo, family, variant, sess)
                for feed in _warmup_feeds(self.repo.family(family)):
                    sess.run(None, feed)
                self._sessions[variant.name] = sess

    def run(self, variant: str, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, float, str]:
        """(first output, service ms, who served) for one batch, from a worker thread."""
        sess = self._sessions[variant]
        start = time.perf_counter()
        output = sess.run(None, feeds)[0]
        return output, (time.perf_counter() - start) * 1e3, self.name

    def healthy(self) -> bool:
        return bool(self._sessions)

    def close(self) -> None:
        self._sessions.clear()
