import json

import pytest

from contract.manifest import FamilySection, VariantEntry
from serving.errors import IntegrityError, RepositoryError
from serving.repository import load_repository
from training.repository import write_family


def _section(names) -> FamilySection:
    return FamilySection(
        task="classification",
        metric="accuracy",
        higher_is_better=True,
        inputs=(),
        outputs=(),
        variants=tuple(
            VariantEntry(n, "full", "fp32", f"{n}/1/model.onnx", "0" * 64, 1, 1, {"accuracy": 0.5}) for n in names
        ),
    )


def test_write_family_replaces_one_family_and_removes_its_stale_variants(tmp_path):
    (tmp_path / "cnn_old").mkdir()
    write_family(tmp_path, "cnn", _section(["cnn_old"]))
    write_family(tmp_path, "rnn", _section(["rnn_a"]))
    manifest = write_family(tmp_path, "cnn", _section(["cnn_new"]))
    assert set(manifest.families) == {"cnn", "rnn"}
    assert [v.name for v in manifest.families["cnn"].variants] == ["cnn_new"]
    assert not (tmp_path / "cnn_old").exists()
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert [v["name"] for v in on_disk["families"]["cnn"]["variants"]] == ["cnn_new"]


def test_missing_repository_says_how_to_build_one(tmp_path):
    with pytest.raises(RepositoryError, match="flexserve train --quick"):
        load_repository(tmp_path)


def test_unknown_schema_version_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99, "families": {"cnn": {}}}))
    with pytest.raises(RepositoryError, match="schema_version 99"):
        load_repository(tmp_path)


def test_a_malformed_family_section_is_refused_with_its_problem(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "families": {"cnn": {"metric": "x"}}}))
    with pytest.raises(RepositoryError, match="malformed"):
        load_repository(tmp_path)


def test_a_file_that_differs_from_its_sha256_is_refused(tmp_path):
    write_family(tmp_path, "cnn", _section(["cnn_a"]))
    (tmp_path / "cnn_a" / "1").mkdir(parents=True)
    (tmp_path / "cnn_a" / "1" / "model.onnx").write_bytes(b"not the trained file")
    with pytest.raises(IntegrityError, match="refusing to serve"):
        load_repository(tmp_path)
    assert load_repository(tmp_path, verify=False).families == ["cnn"]
