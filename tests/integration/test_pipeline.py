"""The real pipeline (training, distillation, export, quantisation, ONNX Runtime, BentoML's
model store) on generated data: fast, and independent of the installed datasets."""

import json

import numpy as np
import pytest
import torch

from contract.files import sha256_file
from contract.layout import live_dir
from contract.sessions import open_session
from serving.repository import check_signature, load_repository
from training.data import load_dataset
from training.export import ParityError, check_parity, export_onnx
from training.pipeline import FAMILIES, load_checkpoint
from training.tasks import get_task

REQUIRED_VARIANT_FIELDS = {"name", "kind", "precision", "onnx", "sha256", "params", "size_bytes", "metrics"}


def test_every_family_gets_every_variant_with_a_complete_manifest_entry(synthetic_repo):
    manifest = json.loads((live_dir(synthetic_repo) / "manifest.json").read_text())
    assert set(manifest["families"]) == set(FAMILIES)
    for family, section in manifest["families"].items():
        names = {v["name"] for v in section["variants"]}
        assert names == {f"{family}_{k}_{p}" for k in ("full", "distilled") for p in ("fp32", "fp16", "int8")}
        for variant in section["variants"]:
            assert REQUIRED_VARIANT_FIELDS <= set(variant)
            assert section["metric"] in variant["metrics"]
            assert (live_dir(synthetic_repo) / variant["name"] / "config.pbtxt").exists()
        full = next(v for v in section["variants"] if v["name"] == f"{family}_full_fp32")
        student = next(v for v in section["variants"] if v["name"] == f"{family}_distilled_fp32")
        assert full["params"] > student["params"]
        assert "test_metric_pytorch" in section["training"]["student_without_distillation"]


def test_every_onnx_file_loads_matches_its_sha256_and_its_manifest_spec(synthetic_repo):
    repo = load_repository(synthetic_repo)  # checks every sha256
    for family in repo.families:
        for variant in repo.variants(family):
            assert sha256_file(variant.path) == variant.sha256
            check_signature(repo, family, variant, open_session(variant.path))


def test_reduced_precision_files_are_smaller(synthetic_repo):
    repo = load_repository(synthetic_repo, verify=False)
    for family in repo.families:
        sizes = {(v.kind, v.precision): v.size_bytes for v in repo.variants(family)}
        for kind in ("full", "distilled"):
            assert sizes[(kind, "fp16")] < sizes[(kind, "fp32")]
            assert sizes[(kind, "int8")] < sizes[(kind, "fp32")]


def test_checkpoints_rebuild_the_model_that_was_exported(synthetic_repo):
    """The safetensors checkpoint + its config rebuild a model equal to the fp32 ONNX file."""
    task = get_task("cnn")
    model = load_checkpoint(task, synthetic_repo.parent / "checkpoints" / "cnn_full")
    data = load_dataset("cnn", synthetic=True)
    images = data.test.inputs["IMAGES"][:8]
    onnx_out = open_session(live_dir(synthetic_repo) / "cnn_full_fp32" / "1" / "model.onnx").run(
        None, {"IMAGES": images}
    )[0]
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(images)).numpy(), onnx_out, atol=1e-4)
    meta = json.loads((synthetic_repo.parent / "checkpoints" / "cnn_full.json").read_text())
    assert meta["data_seed"] == 0  # the split it trained on: a recipe search validates on rows it never saw


def test_repository_is_registered_in_the_bentoml_model_store(synthetic_repo):
    import bentoml

    models = bentoml.models.list("flexserve-model-repository")
    assert models, "the build registered nothing"
    model = models[-1]
    assert "cnn_full_fp32" in model.info.metadata
    assert "accuracy" in model.info.metadata["cnn_full_fp32"]
    assert (model.path_of("manifest.json")) and json.loads(open(model.path_of("manifest.json")).read())


def test_text_preprocessing_can_be_repeated_from_the_manifest_alone(synthetic_repo):
    """Serving must tokenise raw text exactly as training did, knowing only the repository."""
    import re

    repo = load_repository(synthetic_repo)
    spec = repo.family("rnn").contract["tokenizer"]
    vocab = {tok: i for i, tok in enumerate(repo.artifact("rnn", "vocab"))}
    from training.data import encode_texts

    texts = ["The film is GREAT, superb!", "dull dull mess", "unseen words only"]
    expected_tokens, expected_lengths = encode_texts(texts, repo.artifact("rnn", "vocab"))
    for row, text in enumerate(texts):
        words = re.findall(spec["pattern"], text.lower() if spec["lowercase"] else text)[: spec["max_tokens"]]
        ids = [vocab.get(w, spec["unk_id"]) for w in words] or [spec["unk_id"]]
        assert ids == expected_tokens[row, : expected_lengths[row]].tolist()


def test_parity_check_fails_the_build_when_the_export_is_wrong(tmp_path):
    task = get_task("cnn")
    data = load_dataset("cnn", synthetic=True)
    from models.cnn import CNNConfig, ImageClassifier

    torch.manual_seed(0)
    exported = ImageClassifier(CNNConfig(widths=(8,), blocks_per_stage=1)).eval()
    other = ImageClassifier(CNNConfig(widths=(8,), blocks_per_stage=1)).eval()  # different random weights
    export_onnx(exported, task, data.test.take(np.arange(2)).inputs, tmp_path / "m.onnx")
    assert check_parity(exported, tmp_path / "m.onnx", task, data.test, "fp32")["max_abs_diff"] < 1e-4
    with pytest.raises(ParityError, match="disagrees with PyTorch"):
        check_parity(other, tmp_path / "m.onnx", task, data.test, "fp32")


def test_every_variant_carries_its_metrics_standard_error(synthetic_repo):
    repo = load_repository(synthetic_repo, verify=False)
    for family in repo.families:
        section = repo.family(family)
        rows = section.dataset["rows"]["test"]
        for variant in section.variants:
            se = variant.standard_errors[section.metric]
            if section.metric == "accuracy":
                p = variant.metrics["accuracy"]
                assert se == pytest.approx((p * (1 - p) / rows) ** 0.5)
            else:
                assert 0 < se < variant.metrics[section.metric]


def test_students_are_trained_once_per_seed_and_compared_pairwise(tmp_path):
    from loadtest.report import distillation_gain, distillation_target
    from training.pipeline import BuildConfig, build

    config = BuildConfig(out=tmp_path / "repo", quick=True, synthetic=True, seeds=2, register=False)
    section = build(["rnn"], config).families["rnn"]
    seeds = section.training["seeds"]
    assert seeds["seeds"] == [0, 1] and len(seeds["distilled"]) == len(seeds["student_without_distillation"]) == 2
    served = seeds["seeds"].index(seeds["served"])  # the variants are the student best on validation
    assert section.training["distilled"]["test_metric_pytorch"] == seeds["distilled"][served]
    gain = distillation_gain(section)
    differences = np.subtract(seeds["distilled"], seeds["student_without_distillation"])
    assert gain.n == 2 and gain.mean == pytest.approx(differences.mean())
    _, measured, _ = distillation_target("rnn", section)
    assert measured.endswith("points, 2 seeds") and measured.startswith(f"{gain.mean * 100:+.3g} [")


def test_digits_are_transferred_from_the_image_familys_checkpoint_with_its_sha256(synthetic_repo):
    """The synthetic build's digits family: the study ran every path at every budget, the manifest
    names the source checkpoint by its sha256, and the served full model starts from it."""
    section = load_repository(synthetic_repo, verify=False).family("digits")
    info = section.training["transfer"]
    checkpoint = synthetic_repo.parent / "checkpoints" / "cnn_full.safetensors"
    assert info["source"] == {
        "family": "cnn",
        "checkpoint": "cnn_full.safetensors",
        "sha256": sha256_file(checkpoint),
        "best_val_metric": json.loads(checkpoint.with_suffix(".json").read_text())["best_val_metric"],
    }
    assert info["label_budget"] == "all" and info["path"] in ("scratch", "frozen", "finetune")
    study = info["study"]
    assert study["budgets"] == [10, "all"] and study["seeds"] == [0]
    for path in ("scratch", "frozen", "finetune"):
        for budget in ("10", "all"):
            (value,) = study["test"][path][budget]
            assert 0.0 <= value <= 1.0
    assert section.adapter == "image" and section.contract["labels"] == [str(d) for d in range(10)]
    # every training row at the default budget
    assert section.dataset["rows"]["train"] == len(load_dataset("digits", synthetic=True).train)


def test_the_multitask_model_is_compared_with_each_head_trained_alone(synthetic_repo):
    section = json.loads((live_dir(synthetic_repo) / "manifest.json").read_text())["families"]["text_multitask"]
    info = section["training"]["multitask"]
    assert info["loss_weights"] == {"polarity": 1.0, "subjectivity": 1.0}
    singles, own = info["single_task"], info["multitask"]
    assert set(singles) == {"polarity", "subjectivity"}
    assert {s["metric"] for s in singles.values()} == {"accuracy", "balanced_accuracy"}
    assert all(0.0 <= s["test_metric"] <= 1.0 and s["latency_ms"] > 0 for s in singles.values())
    # One encoder and two heads against two encoders with one head each.
    assert singles["polarity"]["params"] < own["params"] < sum(s["params"] for s in singles.values())
    # Its heads measured in PyTorch here, in ONNX Runtime on the served full variant: the same model.
    full = next(v for v in section["variants"] if v["name"] == "text_multitask_full_fp32")
    for head in ("polarity_accuracy", "subjectivity_balanced_accuracy"):
        assert own[head] == pytest.approx(full["metrics"][head], abs=0.01)


def test_a_label_budget_limits_what_the_served_models_learn_from(tmp_path):
    from training.pipeline import BuildConfig, build

    config = BuildConfig(out=tmp_path / "repo", quick=True, synthetic=True, register=False, labels_per_class=20)
    manifest = build(["digits"], config)  # no cnn checkpoint here: trains the source first
    section = manifest.families["digits"]
    assert (tmp_path / "checkpoints" / "cnn_full.safetensors").exists()
    assert section.training["transfer"]["label_budget"] == 20
    assert section.training["transfer"]["study"]["budgets"] == [20, 10, "all"]
    assert section.dataset["rows"]["train"] == 200
    with pytest.raises(ValueError, match="labels_per_class must be an integer >= 1"):
        BuildConfig(labels_per_class=0)
    # A full build does not transfer from the quick build's source checkpoint: it says how to get its own.
    full = BuildConfig(out=tmp_path / "repo", synthetic=True, register=False, seeds=1)
    with pytest.raises(ValueError, match=r"comes from a build with quick=True.*flexserve train --family cnn`"):
        build(["digits"], full)
