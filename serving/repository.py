"""Reads and verifies a model repository written by `flexserve train`.

Nothing is served unless it matches the manifest: every ONNX file and preprocessing
artifact is checked against its sha256, and (with `check_signatures`) every ONNX file's
inputs and outputs against the tensor specs the manifest promises.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from serving.errors import IntegrityError, RepositoryError

SUPPORTED_SCHEMA_VERSIONS = (1,)
BUILD_HINT = "build one with `flexserve train --quick` (minutes) or `flexserve train` (full run)"
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Variant:
    family: str
    name: str
    kind: str
    precision: str
    path: Path
    sha256: str
    metric: float
    params: int
    size_bytes: int


@dataclass(frozen=True)
class Repository:
    root: Path
    manifest: dict

    @property
    def families(self) -> list[str]:
        return sorted(self.manifest["families"])

    def family(self, name: str) -> dict:
        if name not in self.manifest["families"]:
            raise RepositoryError(f"family {name!r} is not in {self.root}: it holds {', '.join(self.families)}")
        return self.manifest["families"][name]

    def variants(self, family: str) -> list[Variant]:
        section = self.family(family)
        return [Variant(family, v["name"], v["kind"], v["precision"], self.root / v["onnx"], v["sha256"],
                        float(v["metrics"][section["metric"]]), int(v["params"]), int(v["size_bytes"]))
                for v in section["variants"]]

    def artifact(self, family: str, name: str) -> object:
        """A preprocessing artifact (vocabulary, catalogue), checked against its sha256."""
        entry = self.family(family)["preprocessing"].get(name)
        if entry is None:
            raise RepositoryError(f"family {family!r} has no preprocessing artifact {name!r}")
        path = self.root / entry["path"]
        _check_file(path, entry["sha256"])
        return json.loads(path.read_text(encoding="utf-8"))


def _check_file(path: Path, expected_sha256: str) -> None:
    if not path.exists():
        raise RepositoryError(f"{path} is listed in the manifest but missing: {BUILD_HINT}")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise IntegrityError(f"{path} has sha256 {actual[:12]}..., the manifest says {expected_sha256[:12]}...: "
                             "refusing to serve a file that differs from the one trained; rebuild the repository")


def load_repository(root: Path | str, verify: bool = True) -> Repository:
    """Load the manifest; with `verify`, check every listed file's sha256."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.exists():
        raise RepositoryError(f"no model repository at {root} (no manifest.json): {BUILD_HINT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RepositoryError(f"{path} is not valid JSON ({error}): {BUILD_HINT}") from error
    if manifest.get("schema_version") not in SUPPORTED_SCHEMA_VERSIONS:
        raise RepositoryError(f"{path} has schema_version {manifest.get('schema_version')!r}; this FlexServe "
                              f"reads {SUPPORTED_SCHEMA_VERSIONS}: rebuild it with this version's `flexserve train`")
    if not manifest.get("families"):
        raise RepositoryError(f"{path} lists no model family: {BUILD_HINT}")
    repo = Repository(root, manifest)
    if verify:
        for family in repo.families:
            for variant in repo.variants(family):
                _check_file(variant.path, variant.sha256)
            for entry in repo.family(family)["preprocessing"].values():
                _check_file(root / entry["path"], entry["sha256"])
    return repo


def check_signature(repo: Repository, family: str, variant: Variant, session) -> None:
    """Raise RepositoryError if an ONNX Runtime session's inputs/outputs differ from the manifest's specs."""
    section = repo.family(family)
    for expected, actual, what in ((section["inputs"], session.get_inputs(), "inputs"),
                                   (section["outputs"], session.get_outputs(), "outputs")):
        got = [{"name": a.name, "dtype": ONNX_DTYPES.get(a.type, a.type),
                "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in actual]
        if got != expected:
            raise RepositoryError(f"{variant.path}: ONNX {what} {got} differ from the manifest's {expected}")
