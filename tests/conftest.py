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
