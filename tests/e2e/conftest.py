"""Real-data fixtures for the end-to-end tests: one --quick build per session (~2 minutes)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FLEXSERVE = [sys.executable, "-m", "flexserve"]
ROOT = Path(__file__).resolve().parents[2]


def run_flexserve(args, **kwargs):
    return subprocess.run(FLEXSERVE + args, cwd=ROOT, capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope="session")
def cli():
    """Runs `flexserve ARGS...` as a user would, in a subprocess."""
    return run_flexserve


@pytest.fixture(scope="session")
def quick_repo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "model_repository"
    env = {**os.environ, "BENTOML_HOME": str(out.parent / "bentoml")}
    result = run_flexserve(["train", "--quick", "--family", "all", "--out", str(out)], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1/" in result.stderr  # progress is shown
    return out


@pytest.fixture(scope="session")
def profiled_quick_repo(quick_repo) -> Path:
    result = run_flexserve(["profile", "--repo", str(quick_repo), "--min-runs", "10", "--seconds", "0.02"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[profile] cnn batch    64" in result.stderr and "profile: 100%" in result.stderr  # progress is shown
    assert "cnn_full_fp32" in result.stdout and "b64:" in result.stdout
    return quick_repo
