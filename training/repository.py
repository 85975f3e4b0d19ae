"""Writes the model repository: Triton's layout plus FlexServe's manifest (the layout and the
schema are the contract, in `contract/layout.py` and `contract/manifest.py`). Every writer works on
a staged version (`contract.layout.new_version`), never on the live one.

Files at the root are ignored by Triton, which treats every folder as a model. Every file
the manifest names carries its sha256, which serving checks before loading it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from contract.files import sha256_file, write_replacing
from contract.layout import live_dir
from contract.manifest import (
    BENTOML_MODEL_NAME,
    ArtifactFile,
    FamilySection,
    Manifest,
    TensorSpec,
    read_manifest,
    write_manifest,
)
from contract.triton_config import variant_config


def write_json_artifact(repo: Path, name: str, payload: object) -> ArtifactFile:
    path = repo / name
    write_replacing(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
    return ArtifactFile(name, sha256_file(path), path.stat().st_size)


def add_variant(
    repo: Path,
    name: str,
    onnx_file: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    rows_per_request: int,
) -> dict:
    """Move an ONNX file into `<repo>/<name>/1/model.onnx` beside its (native) Triton config. `repo` is
    a version being staged (its folder for `name` is replaced, never written into)."""
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    target = folder / "1" / "model.onnx"
    shutil.move(str(onnx_file), target)
    (folder / "config.pbtxt").write_text(variant_config(name, inputs, outputs, rows_per_request, "native"))
    return {"onnx": f"{name}/1/model.onnx", "sha256": sha256_file(target), "size_bytes": target.stat().st_size}


def write_family(repo: Path, family: str, section: FamilySection) -> Manifest:
    """Replace one family's section of the manifest in the staged version `repo` (other families
    stay), removing the folders of its variants that are gone, and save it."""
    manifest = read_manifest(repo, missing_ok=True)
    old = manifest.families.get(family)
    stale = {v.name for v in old.variants} if old else set()
    for name in stale - {v.name for v in section.variants}:
        shutil.rmtree(repo / name, ignore_errors=True)
    return write_manifest(repo, manifest.with_family(family, section))


def register_in_bentoml(repo: Path, manifest: Manifest) -> str:
    """Copy the repository into the BentoML model store (BENTOML_HOME) with metrics as metadata."""
    import bentoml  # heavy import, only when registering

    metadata: dict[str, object] = {"schema_version": manifest.schema_version}
    for section in manifest.families.values():
        for variant in section.variants:
            metadata[variant.name] = {section.metric: round(variant.metrics[section.metric], 5)}
    labels = {"project": "flexserve", "families": "-".join(sorted(manifest.families))}
    with bentoml.models.create(BENTOML_MODEL_NAME, labels=labels, metadata=metadata) as model:
        for item in live_dir(repo).iterdir():
            destination = Path(model.path) / item.name
            if item.is_dir():
                shutil.copytree(item, destination)
            else:
                shutil.copy2(item, destination)
    return str(model.tag)
