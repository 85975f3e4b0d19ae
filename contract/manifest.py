"""The model repository's manifest: the contract between the two halves, as typed sections.

    <repo>/manifest.json                 this file (schema below)
    <repo>/<variant>/config.pbtxt        Triton config (native ONNX Runtime flavour)
    <repo>/<variant>/1/model.onnx
    <repo>/<family>_<artifact>.json      preprocessing state (vocabulary, catalogue)

`training/` writes it, `serving/` reads it, and neither imports the other: everything serving
needs (tensor specs, labels, vocabulary, catalogue, metrics, latency profiles) is here or in a
file named here with its sha256. Sections keep the keys they do not type (`extra`), so a reader
never drops what a newer writer added.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from contract.files import write_replacing
from contract.layout import MANIFEST_FILE, live_dir
from contract.statistics import binomial_se

DEFAULT_REPOSITORY = Path("artifacts/model_repository")  # relative to where a command runs
SCHEMA_VERSION = 1
BUILD_HINT = "build one with `flexserve train --quick` (minutes) or `flexserve train` (full run)"
# The repository's name in BentoML's model store (`flexserve train` registers it there).
BENTOML_MODEL_NAME = "flexserve-model-repository"
PROBLEM_TYPES = ("classification", "regression")  # the values of a family section's `task`


class ManifestError(ValueError):
    """The manifest is missing, malformed, or of a schema this version does not read."""


def variant_name(family: str, kind: str, precision: str) -> str:
    """The one identifier of a variant: manifest key, Triton model name, metric label, answer field."""
    return f"{family}_{kind}_{precision}"


def _split(cls, data: Mapping) -> tuple[dict, dict]:
    """(the keys `cls` types, the rest) of a JSON object."""
    known = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in known}, {k: v for k, v in data.items() if k not in known}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name (see contract.dtypes)
    shape: tuple[int, ...]  # -1 marks a dynamic axis (always the batch on axis 0)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class ArtifactFile:
    """A preprocessing file (vocabulary, catalogue) with the digest serving checks."""

    path: str  # relative to the repository
    sha256: str
    size_bytes: int

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "size_bytes": self.size_bytes}

    @classmethod
    def from_json(cls, data: Mapping) -> ArtifactFile:
        return cls(str(data["path"]), str(data["sha256"]), int(data["size_bytes"]))


@dataclass(frozen=True)
class VariantEntry:
    name: str
    kind: str  # which model: "full" or "distilled"
    precision: str  # "fp32", "fp16" or "int8"
    onnx: str  # path of the ONNX file, relative to the repository
    sha256: str
    size_bytes: int
    params: int
    metrics: Mapping[str, float]  # the test metric, measured in ONNX Runtime
    # Each metric's standard error on the test split (contract.statistics); None: not measured.
    standard_errors: Mapping[str, float] | None = None
    # After `flexserve profile`: {"<batch rows>": {"p50", "p95", "p99", "mean", "min", "max", "runs"}} (ms).
    latency_ms: Mapping[str, Mapping[str, float]] | None = None
    parity: Mapping[str, float] | None = None  # the export's agreement with its source
    source: str | None = None  # "imported" for a user's ONNX model (`flexserve import`); None: trained here
    training: str | None = None  # "federated": trained with Flower (training/federated.py); None: centrally
    extra: Mapping = field(default_factory=dict)

    def __post_init__(self):
        for metric, se in (self.standard_errors or {}).items():
            if isinstance(se, bool) or not isinstance(se, (int, float)) or not (math.isfinite(se) and se >= 0):
                raise ManifestError(
                    f"variant {self.name}: standard_errors.{metric} must be a finite number >= 0, got {se!r}"
                )

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for key in ("latency_ms", "parity", "source", "standard_errors", "training"):
            if out[key] is None:
                del out[key]
        out["metrics"] = dict(self.metrics)
        if self.standard_errors is not None:
            out["standard_errors"] = dict(self.standard_errors)
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping) -> VariantEntry:
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class FamilySection:
    task: str  # "classification" or "regression"
    metric: str  # "accuracy", "rmse", ...
    higher_is_better: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    variants: tuple[VariantEntry, ...]
    rows_per_request: int = 1  # model rows in a typical request (the recommender scores a catalogue)
    contract: Mapping = field(default_factory=dict)  # labels, tokenizer, value ranges: what decoding needs
    preprocessing: Mapping[str, ArtifactFile] = field(default_factory=dict)
    dataset: Mapping = field(default_factory=dict)
    training: Mapping = field(default_factory=dict)
    # Which serving adapter decodes and encodes its requests (serving/families/): "image", "text",
    # "recommender", "multitask_text" or "tensor" (any ONNX model, from its tensor specs); None: chosen
    # by the family's name.
    adapter: str | None = None
    extra: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in PROBLEM_TYPES:
            raise ManifestError(f"task must be one of {', '.join(PROBLEM_TYPES)}, got {self.task!r}")

    def standard_error(self, variant: VariantEntry) -> float | None:
        """The standard error of `variant`'s test metric: as the build measured it, else, for an
        accuracy measured on a known number of test rows, the binomial one; None when unknown."""
        stored = (variant.standard_errors or {}).get(self.metric)
        if stored is not None:
            return float(stored)
        rows = (self.dataset.get("rows") or {}).get("test") if isinstance(self.dataset, Mapping) else None
        value = variant.metrics.get(self.metric)
        if self.metric == "accuracy" and isinstance(rows, int) and rows > 0 and value is not None and 0 <= value <= 1:
            return binomial_se(float(value), rows)
        return None

    def variant(self, name: str) -> VariantEntry:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "dataset": dict(self.dataset),
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "rows_per_request": self.rows_per_request,
            "contract": dict(self.contract),
            "preprocessing": {k: a.to_json() for k, a in self.preprocessing.items()},
            "training": dict(self.training),
            "variants": [v.to_json() for v in self.variants],
            **({"adapter": self.adapter} if self.adapter else {}),
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> FamilySection:
        known, extra = _split(cls, data)
        known["inputs"] = tuple(TensorSpec.from_json(s) for s in known["inputs"])
        known["outputs"] = tuple(TensorSpec.from_json(s) for s in known["outputs"])
        known["variants"] = tuple(VariantEntry.from_json(v) for v in known["variants"])
        known["preprocessing"] = {k: ArtifactFile.from_json(a) for k, a in known.get("preprocessing", {}).items()}
        known["rows_per_request"] = int(known.get("rows_per_request", 1))
        known["higher_is_better"] = bool(known["higher_is_better"])
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class Manifest:
    families: Mapping[str, FamilySection] = field(default_factory=dict)
    # Where and how `flexserve profile` measured: hardware, settings, taken_at.
    latency_profile: Mapping | None = None
    updated_at: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: Mapping = field(default_factory=dict)

    def with_family(self, name: str, section: FamilySection) -> Manifest:
        return replace(self, families={**self.families, name: section})

    def to_json(self) -> dict:
        out = {
            "schema_version": self.schema_version,
            "updated_at": self.updated_at,
            "families": {name: s.to_json() for name, s in self.families.items()},
        }
        if self.latency_profile is not None:
            out["latency_profile"] = dict(self.latency_profile)
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping) -> Manifest:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(
                f"schema_version {data.get('schema_version')!r}; this FlexServe reads "
                f"{SCHEMA_VERSION}: rebuild it with this version's `flexserve train`"
            )
        known, extra = _split(cls, data)
        try:
            known["families"] = {name: FamilySection.from_json(s) for name, s in known.get("families", {}).items()}
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ManifestError):
                raise
            raise ManifestError(f"a family section is malformed ({type(error).__name__}: {error})") from None
        return cls(**known, extra=extra)


def read_manifest(root: str | Path, missing_ok: bool = False) -> Manifest:
    """The live manifest of the repository at `root` (or of the version directory `root`); an empty
    one if it is missing and `missing_ok`."""
    path = live_dir(root) / MANIFEST_FILE
    if not path.exists():
        if missing_ok:
            return Manifest()
        raise ManifestError(f"no model repository at {root} (no {MANIFEST_FILE}): {BUILD_HINT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))  # explicit: Triton's stub runs with an ASCII locale
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path} is not valid JSON ({error}): {BUILD_HINT}") from None
    try:
        return Manifest.from_json(data)
    except ManifestError as error:
        raise ManifestError(f"{path}: {error}") from None


def write_manifest(root: str | Path, manifest: Manifest) -> Manifest:
    """Write `root/manifest.json` atomically (a new file, renamed into place); returns what was
    written. `root` is a version being staged (`contract.layout.new_version`), never the live one."""
    manifest = replace(
        manifest,
        schema_version=SCHEMA_VERSION,
        updated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_replacing(Path(root) / MANIFEST_FILE, json.dumps(manifest.to_json(), indent=2))
    return manifest
