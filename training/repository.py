"""Writes the model repository: Triton's layout plus FlexServe's manifest.

    <repo>/manifest.json                 the contract with serving (see README, "Manifest")
    <repo>/<variant>/config.pbtxt        Triton config (native ONNX Runtime flavour)
    <repo>/<variant>/1/model.onnx
    <repo>/<family>_<artifact>.json      preprocessing state (vocabulary, catalogue)

Files at the root are ignored by Triton, which treats every folder as a model. Every file
the manifest names carries its sha256, which serving checks before loading it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

from training.tasks import Task, TensorSpec

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
BENTOML_MODEL_NAME = "flexserve-model-repository"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def variant_name(family: str, kind: str, precision: str) -> str:
    """The one identifier of a variant: manifest key, Triton model name, metric label."""
    return f"{family}_{kind}_{precision}"


def _triton_dims(spec: TensorSpec) -> str:
    dims = list(spec.shape[1:])  # Triton's dims exclude the batch axis when max_batch_size > 0
    if not dims:  # a per-row scalar: Triton needs [1], reshaped to [] for the model
        return "dims: [ 1 ]\n    reshape: { shape: [ ] }"
    return f"dims: [ {', '.join(str(d) for d in dims)} ]"


TRITON_DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def triton_config(name: str, inputs: list[TensorSpec], output: TensorSpec, max_batch_size: int) -> str:
    """A native-flavour Triton config (official Triton images with the ONNX Runtime backend)."""
    def tensor(spec: TensorSpec) -> str:
        return (f"  {{\n    name: \"{spec.name}\"\n    data_type: {TRITON_DTYPES[spec.dtype]}\n"
                f"    {_triton_dims(spec)}\n  }}")

    input_block = ",\n".join(tensor(spec) for spec in inputs)
    return (
        f"name: \"{name}\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: {max_batch_size}\n"
        f"input [\n{input_block}\n]\n"
        f"output [\n{tensor(output)}\n]\n"
        "dynamic_batching { }\n"
    )


def write_json_artifact(repo: Path, name: str, payload: object) -> dict:
    path = repo / name
    path.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return {"path": name, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def load_manifest(repo: Path) -> dict:
    path = repo / MANIFEST
    if not path.exists():
        return {"schema_version": SCHEMA_VERSION, "families": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def add_variant(repo: Path, task: Task, name: str, onnx_file: Path, inputs: list[TensorSpec],
                max_batch_size: int) -> dict:
    """Move an ONNX file into `<repo>/<name>/1/model.onnx` beside its Triton config."""
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    target = folder / "1" / "model.onnx"
    shutil.move(str(onnx_file), target)
    (folder / "config.pbtxt").write_text(triton_config(name, inputs, task.output_spec(), max_batch_size))
    return {"onnx": f"{name}/1/model.onnx", "sha256": sha256_file(target), "size_bytes": target.stat().st_size}


def write_family(repo: Path, family: str, section: dict) -> dict:
    """Replace one family's section of the manifest (other families stay) and save it."""
    manifest = load_manifest(repo)
    stale = {v["name"] for v in manifest["families"].get(family, {}).get("variants", [])}
    for name in stale - {v["name"] for v in section["variants"]}:
        shutil.rmtree(repo / name, ignore_errors=True)
    manifest["families"][family] = section
    save_manifest(repo, manifest)
    return manifest


def save_manifest(repo: Path, manifest: dict) -> None:
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["updated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tmp = repo / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, repo / MANIFEST)  # atomic: a reader never sees half a manifest


def register_in_bentoml(repo: Path, manifest: dict) -> str:
    """Copy the repository into the BentoML model store (BENTOML_HOME) with metrics as metadata."""
    import bentoml  # heavy import, only when registering

    metadata: dict[str, object] = {"schema_version": manifest["schema_version"]}
    for family, section in manifest["families"].items():
        for variant in section["variants"]:
            metadata[variant["name"]] = {section["metric"]: round(variant["metrics"][section["metric"]], 5)}
    labels = {"project": "flexserve", "families": "-".join(sorted(manifest["families"]))}
    with bentoml.models.create(BENTOML_MODEL_NAME, labels=labels, metadata=metadata) as model:
        for item in repo.iterdir():
            destination = Path(model.path) / item.name
            if item.is_dir():
                shutil.copytree(item, destination)
            else:
                shutil.copy2(item, destination)
    return str(model.tag)
