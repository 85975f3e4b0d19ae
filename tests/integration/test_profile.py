"""`flexserve profile` on real ONNX Runtime sessions, and the policy and simulator on its output."""

import json

import onnxruntime as ort
import pytest

from contract.layout import live_dir
from contract.manifest import FamilySection
from loadtest.profile import ProfileSettings, batch_sizes_for, profile
from loadtest.simulator import sweep
from serving.errors import RepositoryError
from serving.policy import policy_from_manifest
from serving.repository import load_repository


def test_every_variant_gets_latency_quantiles_at_every_batch_size(profiled_repo):
    manifest = json.loads((live_dir(profiled_repo) / "manifest.json").read_text())
    for family, section in manifest["families"].items():
        sizes = batch_sizes_for(FamilySection.from_json(section))
        assert {1, 4, 16, 64} <= set(sizes) and sizes == sorted(sizes)
        if family == "recsys":
            assert section["rows_per_request"] in sizes  # one whole typical request
        for variant in section["variants"]:
            latency = variant["latency_ms"]
            assert [int(b) for b in latency] == sizes
            for stats in latency.values():
                assert 0 < stats["min"] <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
                assert stats["runs"] >= 10
            # More rows cost more: a 64-row batch is slower than one row.
            assert latency["64"]["p50"] > latency["1"]["p50"]
    info = manifest["latency_profile"]
    assert info["settings"]["provider"] == "CPUExecutionProvider" and info["settings"]["threads"] == 1
    assert info["settings"]["onnxruntime"] == ort.__version__
    assert info["hardware"]["logical_cores"] >= 1 and info["hardware"]["cpu"]


def test_profiles_keep_the_repository_servable(profiled_repo):
    load_repository(profiled_repo)  # the manifest still verifies: profiling touches no model file


def test_the_policy_routes_on_measured_profiles(profiled_repo):
    section = load_repository(profiled_repo).family("cnn")
    policy = policy_from_manifest("cnn", section, executors={"local": 2})
    loose = policy.route(10_000.0)
    assert loose.variant == policy.most_accurate and loose.predicted_to_meet
    tight = policy.route(0.001)
    assert tight.variant == policy.fastest() and not tight.predicted_to_meet and "no variant fits" in tight.reason


def test_simulator_runs_on_measured_profiles(profiled_repo):
    section = load_repository(profiled_repo).family("rnn")
    rows = sweep("rnn", section, loads=[50.0, 5000.0], duration_s=2.0, arrivals=["poisson"])
    assert len(rows) == 2 * 4
    low = {r["policy"]: r for r in rows if r["load_rps"] == 50.0}
    assert low["full"]["slo_attainment"] >= 0.95  # default budgets fit the full model when idle
    assert low["adaptive"]["mean_metric"] == pytest.approx(low["full"]["mean_metric"], abs=0.01)
    assert low["fastest"]["mean_metric"] <= low["full"]["mean_metric"]


def test_cuda_without_the_gpu_build_says_how_to_get_it(profiled_repo):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    with pytest.raises(RuntimeError, match=r"flexserve\[gpu\]"):
        profile(profiled_repo, ProfileSettings(device="cuda"))


def test_unknown_family_and_missing_repository(tmp_path, profiled_repo):
    with pytest.raises(ValueError, match="gan"):
        profile(profiled_repo, families=["gan"])
    with pytest.raises(RepositoryError, match="flexserve train"):
        profile(tmp_path / "nowhere")


def test_missing_only_skips_a_fully_profiled_repository(profiled_repo):
    before = json.loads((live_dir(profiled_repo) / "manifest.json").read_text())["latency_profile"]["taken_at"]
    manifest = profile(profiled_repo, missing_only=True)
    assert manifest.latency_profile["taken_at"] == before
