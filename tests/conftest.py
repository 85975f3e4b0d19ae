"""Shared fixtures. Real-data builds are slow, so they are built once per session."""

from __future__ import annotations

import os
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
    build(list(FAMILIES), BuildConfig(out=out, quick=True, synthetic=True, register=True))
    return out


@pytest.fixture(scope="session")
def profiled_repo(synthetic_repo, tmp_path_factory) -> Path:
    """A copy of the synthetic repository with latency profiles (a few seconds, few runs)."""
    import shutil

    from training.profile import ProfileSettings, profile

    out = tmp_path_factory.mktemp("profiled") / "model_repository"
    shutil.copytree(synthetic_repo, out)
    profile(out, ProfileSettings(warmup_runs=2, min_runs=10, seconds_per_point=0.01))
    return out
