"""Real-data fixtures for the end-to-end tests: one --quick build per session (~6 minutes on 2 cores)."""

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


@pytest.fixture(scope="session")
def byom_repo(profiled_repo, tmp_path_factory) -> Path:
    """The profiled synthetic repository plus two families brought in with `flexserve import`, as a
    user would: `tabular` (the PyTorch models `python -m loadtest.byom` trains and exports) and `trap`
    (the same, but NaN below a first feature of -100 in the small model, -1000 in the big one)."""
    import shutil

    from loadtest.byom import write_demo_models

    root = tmp_path_factory.mktemp("byom")
    repo = root / "model_repository"
    shutil.copytree(profiled_repo, repo, symlinks=True)
    made = subprocess.run(
        [sys.executable, "-m", "loadtest.byom", str(root / "tabular"), "--hidden", "512", "--rows", "400"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0 and "big.onnx" in made.stdout, made.stderr[-2000:]
    write_demo_models(root / "trap", rows=400, hidden=512, fail_below=True)
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml")}
    for family in ("tabular", "trap"):
        models = root / family
        args = ["import", "--family", family, "--repo", str(repo), "--eval", str(models / "eval.npz")]
        args += ["--onnx", str(models / "big.onnx"), "--onnx", str(models / "small.onnx")]
        result = run_flexserve([*args, "--labels", str(models / "labels.txt"), "--no-profile"], env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{family}_small_int8" in result.stdout and f"import {family}: 100% 6/6" in result.stderr
        profiled = run_flexserve(
            ["profile", "--repo", str(repo), "--family", family, "--min-runs", "10", "--seconds", "0.02"], env=env
        )
        assert profiled.returncode == 0, profiled.stderr[-3000:]
    return repo
