import json

import pytest

from serving.errors import IntegrityError, RepositoryError
from serving.repository import load_repository
from training.repository import triton_config, write_family
from training.tasks import get_task


def test_triton_config_excludes_the_batch_axis_and_reshapes_scalars():
    task = get_task("rnn")
    text = triton_config("rnn_full_fp32", task.input_specs(None), task.output_spec(), 64)
    assert 'platform: "onnxruntime_onnx"' in text and "max_batch_size: 64" in text
    assert 'name: "TOKENS"' in text and "dims: [ -1 ]" in text
    assert "reshape: { shape: [ ] }" in text  # LENGTHS is one scalar per row
    assert "dynamic_batching { }" in text


def _section(names):
    return {"metric": "accuracy", "preprocessing": {}, "variants": [
        {"name": n, "kind": "full", "precision": "fp32", "onnx": f"{n}/1/model.onnx", "sha256": "0" * 64,
         "params": 1, "size_bytes": 1, "metrics": {"accuracy": 0.5}} for n in names]}


def test_write_family_replaces_one_family_and_removes_its_stale_variants(tmp_path):
    (tmp_path / "cnn_old").mkdir()
    write_family(tmp_path, "cnn", _section(["cnn_old"]))
    write_family(tmp_path, "rnn", _section(["rnn_a"]))
    manifest = write_family(tmp_path, "cnn", _section(["cnn_new"]))
    assert set(manifest["families"]) == {"cnn", "rnn"}
    assert [v["name"] for v in manifest["families"]["cnn"]["variants"]] == ["cnn_new"]
    assert not (tmp_path / "cnn_old").exists()


def test_missing_repository_says_how_to_build_one(tmp_path):
    with pytest.raises(RepositoryError, match="flexserve train --quick"):
        load_repository(tmp_path)


def test_unknown_schema_version_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99, "families": {"cnn": {}}}))
    with pytest.raises(RepositoryError, match="schema_version 99"):
        load_repository(tmp_path)


def test_a_file_that_differs_from_its_sha256_is_refused(tmp_path):
    write_family(tmp_path, "cnn", _section(["cnn_a"]))
    (tmp_path / "cnn_a" / "1").mkdir(parents=True)
    (tmp_path / "cnn_a" / "1" / "model.onnx").write_bytes(b"not the trained file")
    with pytest.raises(IntegrityError, match="refusing to serve"):
        load_repository(tmp_path)
    assert load_repository(tmp_path, verify=False).families == ["cnn"]
