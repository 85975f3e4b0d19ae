"""Reads and verifies a model repository written by `flexserve train` (the manifest's schema is
in `contract/manifest.py`).

Nothing is served unless it matches the manifest: every ONNX file and preprocessing artifact is
checked against its sha256, and every ONNX session's inputs and outputs against the tensor specs
the manifest promises (`check_signature`, when the backend opens it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from contract.dtypes import from_onnx
from contract.files import sha256_file
from contract.layout import live_dir
from contract.manifest import BUILD_HINT, FamilySection, Manifest, ManifestError, read_manifest
from serving.errors import IntegrityError, RepositoryError


@dataclass(frozen=True)
class Variant:
    """A variant as serving uses it: its manifest entry resolved against the repository."""

    family: str
    name: str
    kind: str
    precision: str
    path: Path
    sha256: str
    metric: float  # the family's test metric
    params: int
    size_bytes: int


@dataclass(frozen=True)
class Repository:
    root: Path
    manifest: Manifest

    @property
    def families(self) -> list[str]:
        return sorted(self.manifest.families)

    def family(self, name: str) -> FamilySection:
        section = self.manifest.families.get(name)
        if section is None:
            raise RepositoryError(f"family {name!r} is not in {self.root}: it holds {', '.join(self.families)}")
        return section

    def variants(self, family: str) -> list[Variant]:
        section = self.family(family)
        return [
            Variant(
                family,
                v.name,
                v.kind,
                v.precision,
                self.root / v.onnx,
                v.sha256,
                float(v.metrics[section.metric]),
                int(v.params),
                int(v.size_bytes),
            )
            for v in section.variants
        ]

    def artifact(self, family: str, name: str) -> object:
        """A preprocessing artifact (vocabulary, catalogue), checked against its sha256."""
        entry = self.family(family).preprocessing.get(name)
        if entry is None:
            raise RepositoryError(f"family {family!r} has no preprocessing artifact {name!r}")
        path = self.root / entry.path
        _check_file(path, entry.sha256)
        return json.loads(path.read_text(encoding="utf-8"))


# Files already checked, by identity: writers never write into a repository file (they replace it,
# see contract/layout.py), so a file a new version shares by hard link, or an artifact read again, is
# not hashed again (a few entries per version served).
_VERIFIED: dict[tuple[int, int, int, int], str] = {}


def _check_file(path: Path, expected_sha256: str) -> None:
    if not path.exists():
        raise RepositoryError(f"{path} is listed in the manifest but missing: {BUILD_HINT}")
    info = path.stat()
    identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if _VERIFIED.get(identity) == expected_sha256:
        return
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise IntegrityError(
            f"{path} has sha256 {actual[:12]}..., the manifest says {expected_sha256[:12]}...: "
            "refusing to serve a file that differs from the one trained; rebuild the repository"
        )
    _VERIFIED[identity] = actual


def load_repository(root: str | Path, verify: bool = True) -> Repository:
    """Read the live version's manifest; with `verify`, check every file it names against its sha256.
    The repository's `root` is the live version's directory (resolved once: a later switch does not
    move files under it)."""
    root = live_dir(Path(root)).resolve()
    try:
        manifest = read_manifest(root)
    except ManifestError as error:
        raise RepositoryError(str(error)) from None
    if not manifest.families:
        raise RepositoryError(f"{root / 'manifest.json'} lists no model family: {BUILD_HINT}")
    repo = Repository(root, manifest)
    if verify:
        for family in repo.families:
            for variant in repo.variants(family):
                _check_file(variant.path, variant.sha256)
            for entry in repo.family(family).preprocessing.values():
                _check_file(root / entry.path, entry.sha256)
    return repo


def check_signature(repo: Repository, family: str, variant: Variant, session) -> None:
    """Raise RepositoryError if an ONNX Runtime session's inputs/outputs differ from the manifest's specs."""
    section = repo.family(family)
    for expected, actual, what in (
        (section.inputs, session.get_inputs(), "inputs"),
        (section.outputs, session.get_outputs(), "outputs"),
    ):
        want = [s.to_json() for s in expected]
        got = [
            {"name": a.name, "dtype": from_onnx(a.type), "shape": [d if isinstance(d, int) else -1 for d in a.shape]}
            for a in actual
        ]
        if got != want:
            raise RepositoryError(f"{variant.path}: ONNX {what} {got} differ from the manifest's {want}")
