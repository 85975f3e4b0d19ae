"""The `flexserve` command as a user runs it, on the real datasets (the --quick build).

This is the issue's definition of done: `flexserve train --quick --family all --out DIR`
builds a repository whose every ONNX file loads in ONNX Runtime and matches its sha256 and
its manifest spec. It takes about two minutes on two cores.
"""

import json
import os
import subprocess
import sys

import pytest

from contract.layout import live_dir
from contract.sessions import open_session
from serving.repository import check_signature, load_repository


@pytest.mark.slow
def test_quick_build_on_real_data_serves_every_variant(quick_repo):
    repo = load_repository(quick_repo)
    assert repo.families == ["cnn", "digits", "recsys", "rnn", "text_multitask"]
    for family in repo.families:
        section = repo.family(family)
        # real data, a --quick subset (the 1,797 digits are used whole)
        assert "subset" in section.dataset["source"] or family == "digits"
        variants = repo.variants(family)
        assert len(variants) == 6
        for variant in variants:
            check_signature(repo, family, variant, open_session(variant.path))
    cnn = repo.family("cnn")
    assert cnn.contract["labels"][7] == "Sneaker"
    assert repo.family("recsys").rows_per_request == 1682
    full = next(v for v in repo.variants("cnn") if v.name == "cnn_full_fp32")
    assert full.metric > 0.5  # real Fashion-MNIST, two short epochs: far above chance (0.1)


@pytest.mark.slow
def test_quick_build_is_registered_with_bentoml(quick_repo):
    env = {**os.environ, "BENTOML_HOME": str(quick_repo.parent / "bentoml")}
    listed = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "list"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert "flexserve-model-repository" in listed.stdout


@pytest.mark.slow
def test_report_prints_the_variant_table_and_target_checks(quick_repo, tmp_path, cli):
    result = cli(
        [
            "report",
            "--repo",
            str(quick_repo),
            "--rounds",
            "5",
            "--markdown",
            str(tmp_path / "r.md"),
            "--plot",
            str(tmp_path / "r.png"),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| cnn_full_fp32 |" in result.stdout and "| recsys_distilled_int8 |" in result.stdout
    assert "student >= 2x faster at batch 1" in result.stdout
    assert (tmp_path / "r.png").stat().st_size > 10_000
    rows = json.loads((tmp_path / "r.json").read_text())
    assert set(rows["latency_p50_ms"]["rnn_full_fp32"]) == {"1", "32"}
    # The HTTP floor was measured in this run (a real bare BentoML endpoint), for every trained family.
    floor = rows["http_floor_p50_ms"]
    assert set(floor) == {"cnn", "rnn", "recsys", "digits", "text_multitask"}
    assert all(f["echo"] > 0 and f["full_fp32"] > 0 for f in floor.values())
    assert "full model >= 1x the bare HTTP round trip" in result.stdout
    assert "distillation gain >= 0.5 points, 95% interval above 0 | 1 seed: no interval" in result.stdout
    # The transfer study: its table, targets and the label-efficiency plot.
    assert "digits: transferred from cnn (cnn_full.safetensors, sha256 " in result.stdout
    assert "| finetune | " in result.stdout and "10 labels/class" in result.stdout
    assert "digits transfer at 10 labels/class >= +10 points vs scratch" in result.stdout
    # The quick build does not train the single-task models (only --compare-single-task does): the
    # report says how to measure the comparison instead of a table.
    assert "| single-task subjectivity |" not in result.stdout
    assert "`flexserve train --family text_multitask --compare-single-task` trains them | NOT MEASURED |" in (
        result.stdout
    )
    assert (tmp_path / "r_label_efficiency.png").stat().st_size > 10_000


def test_unknown_family_is_a_clear_usage_error(cli):
    result = cli(["train", "--family", "gan"])
    assert result.returncode == 2
    assert "invalid choice: 'gan'" in result.stderr and "cnn" in result.stderr


def test_missing_repository_report_says_how_to_build_one(tmp_path, cli):
    result = cli(["report", "--repo", str(tmp_path / "nowhere")])
    assert result.returncode == 2
    assert "flexserve train" in result.stderr


def test_distill_search_without_a_teacher_says_how_to_train_one(tmp_path, cli):
    result = cli(["distill-search", "--checkpoints", str(tmp_path)])
    assert result.returncode == 2
    assert "no trained cnn teacher" in result.stderr and "flexserve train --family cnn" in result.stderr
    result = cli(["distill-search", "--checkpoints", str(tmp_path), "--val-rows", "0"])
    assert result.returncode == 2 and "val_rows (--val-rows) must be >= 1, got 0" in result.stderr


@pytest.mark.slow
def test_distill_search_pairs_each_recipe_with_its_baseline_on_validation(quick_repo, tmp_path, cli):
    recipes = ["--recipe", "plain", "--recipe", "kd T2 a0.9"]
    checkpoints = quick_repo.parent / "checkpoints"
    args = ["--checkpoints", str(checkpoints), "--train-rows", "256", "--val-rows", "1000", "--seeds", "2"]
    args += ["--out", str(tmp_path)]
    result = cli(["distill-search", *args, *recipes, "--device", "cpu"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cnn distillation recipes:" in result.stderr and "ETA" in result.stderr  # progress with an ETA
    found = json.loads((tmp_path / "distill_search_cnn.json").read_text())
    assert found["rows"] == {"train": 256, "val": 1000} and found["seeds"] == [0, 1]
    runs = found["runs"]
    assert set(runs) == {"plain", "kd T2 a0.9"} and all(
        len(v) == 2 and 0 < min(v) <= max(v) <= 1 for v in runs.values()
    )
    gain = found["gains"]["kd T2 a0.9"]
    assert gain["baseline"] == "plain"
    assert gain["mean"] == pytest.approx(sum(runs["kd T2 a0.9"]) / 2 - sum(runs["plain"]) / 2)
    assert gain["low"] <= gain["mean"] <= gain["high"]
    assert "| kd T2 a0.9 |" in result.stdout and "(baseline)" in result.stdout


@pytest.mark.slow
def test_profile_writes_latency_into_the_manifest(profiled_quick_repo):
    manifest = json.loads((live_dir(profiled_quick_repo) / "manifest.json").read_text())
    for section in manifest["families"].values():
        for variant in section["variants"]:
            assert {"1", "4", "16", "64"} <= set(variant["latency_ms"])
    recsys = manifest["families"]["recsys"]["variants"][0]["latency_ms"]
    assert "1682" in recsys  # a whole typical request: the catalogue for one user
    load_repository(profiled_quick_repo)  # still verifies


@pytest.mark.slow
def test_simulate_prints_rows_targets_and_plots(profiled_quick_repo, tmp_path, cli):
    result = cli(
        [
            "simulate",
            "--repo",
            str(profiled_quick_repo),
            "--family",
            "cnn",
            "--duration",
            "3",
            "--loads",
            "50",
            "500",
            "5000",
            "--json",
            str(tmp_path / "s.json"),
            "--plot",
            str(tmp_path / "s.png"),
            "--markdown",
            str(tmp_path / "s.md"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "simulate cnn: 100% 24/24 run" in result.stderr  # progress with a total
    rows = json.loads((tmp_path / "s.json").read_text())
    assert len(rows) == 3 * 4 * 2  # loads x policies x arrival patterns
    assert {"policy", "load_rps", "slo_attainment", "mean_metric", "p99_ms"} <= set(rows[0])
    assert "adaptive holds 99% SLO" in result.stdout
    assert (tmp_path / "s.png").stat().st_size > 10_000


@pytest.mark.slow
def test_bench_policy_prints_the_decision_overhead(profiled_quick_repo, cli):
    result = cli(["bench-policy", "--repo", str(profiled_quick_repo), "--decisions", "2000"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "median" in result.stdout and "target: median <= 20 us per decision" in result.stdout


def test_simulate_without_profiles_says_how_to_make_them(tmp_path, cli):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "families": {
                    "cnn": {
                        "task": "classification",
                        "metric": "accuracy",
                        "higher_is_better": True,
                        "inputs": [],
                        "outputs": [],
                        "variants": [
                            {
                                "name": "cnn_full_fp32",
                                "kind": "full",
                                "precision": "fp32",
                                "onnx": "x.onnx",
                                "sha256": "0",
                                "size_bytes": 1,
                                "params": 1,
                                "metrics": {"accuracy": 0.9},
                            }
                        ],
                    }
                },
            }
        )
    )
    result = cli(["simulate", "--repo", str(repo)])
    assert result.returncode == 2
    assert "flexserve profile" in result.stderr


def test_simulate_rejects_malformed_budgets(cli):
    result = cli(["simulate", "--budgets", "fast"])
    assert result.returncode == 2 and "MS:WEIGHT" in result.stderr
