"""Shared fixtures. Real-data builds are slow, so they are built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _bentoml_home(tmp_path_factory, monkeypatch):
    """Never touch the user's real BentoML model store."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path_factory.getbasetemp() / "bentoml"))


@pytest.fixture(scope="session")
def synthetic_repo(tmp_path_factory) -> Path:
    """A model repository built by the real pipeline on generated data (~20 s)."""
    from training.pipeline import FAMILIES, BuildConfig, build

    out = tmp_path_factory.mktemp("synthetic") / "model_repository"
    os.environ["BENTOML_HOME"] = str(tmp_path_factory.getbasetemp() / "bentoml")
    # With the multi-task comparison (a real build makes it only when asked: --compare-single-task).
    build(list(FAMILIES), BuildConfig(out=out, quick=True, synthetic=True, register=True, compare_single_task=True))
    return out


@pytest.fixture(scope="session")
def profiled_repo(synthetic_repo, tmp_path_factory) -> Path:
    """A copy of the synthetic repository with latency profiles (a few seconds, few runs)."""
    import shutil

    from loadtest.profile import ProfileSettings, profile

    out = tmp_path_factory.mktemp("profiled") / "model_repository"
    shutil.copytree(synthetic_repo, out, symlinks=True)
    profile(out, ProfileSettings(warmup_runs=2, min_runs=10, seconds_per_point=0.01))
    return out


_APP: dict = {}  # one ASGI app per process: BentoML registers its Prometheus metrics when it builds one


@contextmanager
def _in_process(repo: Path, client: tuple[str, int] = ("127.0.0.1", 50000), **env: str) -> Iterator:
    """The BentoML service over `repo` as an in-process ASGI app (Starlette's TestClient), called
    from the `client` address (a loopback one by default, as a local user's). One at a time, all on one
    app (BentoML registers its metrics globally when it builds one), each with its own service
    instance; wrap `client.app` in another TestClient for a second address."""
    from starlette.testclient import TestClient

    from serving.service import FlexServe

    settings = {"FLEXSERVE_REPO": str(repo), **env}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    if "app" not in _APP:
        _APP["app"] = FlexServe.to_asgi()
    try:
        with TestClient(_APP["app"], client=client) as test_client:  # a new service instance: read the env now
            yield test_client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def gateway_client():
    """`with gateway_client(repo, FLEXSERVE_X="...") as client:` the gateway in-process over `repo`."""
    return _in_process
