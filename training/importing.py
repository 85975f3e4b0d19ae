"""`flexserve import`: a user's ONNX models become a family of budget-routed variants.

    flexserve import --family NAME --onnx MODEL.onnx [--onnx OTHER.onnx ...] --eval EVAL.npz
                     [--task classification|regression] [--labels LABELS.txt] [--repo DIR] [--replace]

For each given model: the model as given (`fp32`), an `fp16` version (weights and activations in
half precision, inputs and outputs as given) and an `int8` version (static QDQ calibrated on
evaluation rows when the model has convolutions, dynamic quantisation otherwise). A converted
version is kept only if it stays close to the model it came from on the evaluation rows:

    classification: top-1 agreement >= 99% (fp16) or >= 95% (int8)
    regression:     RMSE between the outputs <= 1% (fp16) or 10% (int8) of the outputs' standard deviation

A conversion that fails or misses its tolerance is reported and left out, never written. Every
variant's metric is measured in ONNX Runtime on the evaluation set: accuracy against `labels`, RMSE
against `targets`, or, with neither, agreement with (or RMSE against) the largest model's outputs.
The family is written as a new repository version (the live one is never touched) with the `tensor`
adapter, which serves any model from its manifest entry.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from contract.dtypes import DTYPES
from contract.layout import new_version
from contract.manifest import FamilySection, TensorSpec, VariantEntry, read_manifest, variant_name
from contract.sessions import open_session
from contract.statistics import binomial_se, rmse_se
from training import repository
from training.progress import Progress
from training.variants import to_fp16, to_int8_dynamic, to_int8_static

SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
TASKS = ("classification", "regression")
# A converted variant is kept if it stays this close to its source on the evaluation rows.
MIN_TOP1_AGREEMENT = {"fp16": 0.99, "int8": 0.95}
MAX_RMSE_SHARE_OF_STD = {"fp16": 0.01, "int8": 0.10}
CALIBRATION_ROWS = 64
EXAMPLE_MAX_VALUES = 10_000  # an example row kept in the manifest (for profiling) is at most this big
EVAL_BATCH = 256


class ImportRefused(ValueError):
    """The models or the evaluation set are not acceptable; the message says why and what is."""


@dataclass(frozen=True)
class ImportRequest:
    family: str
    models: tuple[Path, ...]
    eval_set: Path
    repo: Path
    task: str | None = None
    labels: Path | None = None
    replace: bool = False
    register: bool = True


def _specs(values) -> tuple[TensorSpec, ...]:
    specs = []
    for value in values:
        kind = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in kind.shape.dim)
        specs.append(TensorSpec(value.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)).name, dims))
    return tuple(specs)


def signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of a checked ONNX file; refuses one that fails `onnx.checker` or has no dynamic batch axis."""
    if not path.is_file():
        raise ImportRefused(f"{path} does not exist; accepted: the path of an .onnx file")
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # the checker's own exception types vary by version
        raise ImportRefused(
            f"{path} is not a valid ONNX model ({type(error).__name__}: {error}); accepted: a file "
            "that passes onnx.checker.check_model"
        ) from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = _specs(v for v in model.graph.input if v.name not in initializers)
    outputs = _specs(model.graph.output)
    for spec in (*inputs, *outputs):
        if spec.dtype not in DTYPES:
            raise ImportRefused(
                f"{path}: {spec.name} is {spec.dtype}; accepted: tensors of {', '.join(DTYPES)} (object: strings)"
            )
        if not spec.shape or spec.shape[0] != -1:
            raise ImportRefused(
                f"{path}: {spec.name} has shape {list(spec.shape)}, with no dynamic batch axis; "
                "accepted: models whose inputs and outputs all have a dynamic first axis (export "
                "with dynamic_axes={name: {0: 'batch'}})"
            )
    return inputs, outputs


def _kinds(models: tuple[Path, ...]) -> list[str]:
    """A variant kind per model, from its file name (safe, distinct)."""
    kinds = []
    for path in models:
        kind = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_") or "model"
        kind = kind if kind[0].isalpha() else f"m{kind}"
        while kind in kinds:
            kind += "_2"
        kinds.append(kind)
    return kinds


def load_eval(
    path: Path, inputs: tuple[TensorSpec, ...]
) -> tuple[dict[str, np.ndarray], str | None, np.ndarray | None]:
    """(model inputs, "labels" / "targets" / None, the truth) from an .npz, checked against the inputs' specs."""
    if not path.is_file():
        raise ImportRefused(
            f"{path} does not exist; accepted: an .npz written by "
            "numpy.savez(path, <input>=..., labels=... or targets=...)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as error:
        raise ImportRefused(
            f"{path} is not a readable .npz ({error}); accepted: numpy.savez(path, <input>=..., "
            "labels=... or targets=...)"
        ) from None
    accepted = ", ".join(f"{s.name} ({s.dtype}, shape {list(s.shape)})" for s in inputs) + " and labels or targets"
    truth_keys = [k for k in ("labels", "targets") if k in arrays]
    if len(truth_keys) > 1:
        raise ImportRefused(f"{path} holds both labels and targets; accepted: one of them, or neither")
    unknown = sorted(set(arrays) - {s.name for s in inputs} - {"labels", "targets"})
    if unknown:
        raise ImportRefused(f"{path}: array {unknown[0]!r} is not an input of the model; accepted: {accepted}")
    feeds, rows = {}, None
    for spec in inputs:
        if spec.name not in arrays:
            raise ImportRefused(f"{path}: input {spec.name!r} is missing; accepted: {accepted}")
        value = arrays[spec.name]
        if value.dtype.name != spec.dtype:
            raise ImportRefused(f"{path}: {spec.name} is {value.dtype.name}; accepted: {spec.dtype}")
        if value.ndim != len(spec.shape) or any(
            d not in (-1, g) for d, g in zip(spec.shape[1:], value.shape[1:], strict=True)
        ):
            raise ImportRefused(
                f"{path}: {spec.name} has shape {list(value.shape)}; accepted: {list(spec.shape)} (-1: any size)"
            )
        if rows is not None and len(value) != rows:
            raise ImportRefused(
                f"{path}: {spec.name} has {len(value)} rows, another input {rows}; accepted: the same "
                "number of rows in every array"
            )
        rows = len(value)
        feeds[spec.name] = value
    if not rows:
        raise ImportRefused(f"{path} has no rows; accepted: at least one evaluation row")
    kind = truth_keys[0] if truth_keys else None
    truth = arrays[kind] if kind else None
    if truth is not None:
        if len(truth) != rows:
            raise ImportRefused(f"{path}: {kind} has {len(truth)} rows, the inputs {rows}; accepted: one per row")
        if kind == "labels" and (truth.dtype.kind not in "iu" or truth.ndim != 1):
            raise ImportRefused(
                f"{path}: labels are {truth.dtype.name} of shape {list(truth.shape)}; accepted: "
                "integer class ids, one per row"
            )
        if kind == "targets" and truth.dtype.kind != "f":
            raise ImportRefused(f"{path}: targets are {truth.dtype.name}; accepted: floating-point values")
    return feeds, kind, truth


def run_model(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The model's first output over all rows, in batches, as served (ONNX Runtime, CPU)."""
    session = open_session(path, threads=2)
    rows = len(next(iter(feeds.values())))
    parts = [
        session.run(None, {k: v[i : i + EVAL_BATCH] for k, v in feeds.items()})[0] for i in range(0, rows, EVAL_BATCH)
    ]
    return np.concatenate(parts)


def close_enough(
    reference: np.ndarray, candidate: np.ndarray, task: str, precision: str
) -> tuple[bool, dict[str, float], str]:
    """Whether a converted variant stays within its tolerance of the model it came from: the verdict,
    the figure and its bound (the manifest's `parity`), and a line saying so."""
    if task == "classification":
        agreement = float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())
        bound = MIN_TOP1_AGREEMENT[precision]
        figures = {"top1_agreement": agreement, "min_top1_agreement": bound}
        return agreement >= bound, figures, f"top-1 agreement {agreement:.4f} (>= {bound})"
    rmse = float(np.sqrt(np.mean((reference.astype(np.float64) - candidate) ** 2)))
    limit = MAX_RMSE_SHARE_OF_STD[precision] * float(reference.std()) + 1e-6
    figures = {"rmse_to_source": rmse, "max_rmse_to_source": limit}
    return rmse <= limit, figures, f"RMSE to the source {rmse:.4g} (<= {limit:.4g})"


def metric_of(outputs: np.ndarray, task: str, truth: np.ndarray) -> tuple[float, float]:
    """(the metric on the evaluation set, its standard error)."""
    if task == "classification":
        value = float((outputs.argmax(axis=1) == truth.reshape(-1)).mean())
        return value, binomial_se(value, len(truth))
    squared = (outputs.reshape(len(truth), -1).astype(np.float64) - truth.reshape(len(truth), -1)) ** 2
    return float(np.sqrt(np.mean(squared))), rmse_se(squared) if squared.size > 1 else 0.0


def _infer_task(outputs: tuple[TensorSpec, ...], kind: str | None) -> str:
    if kind == "labels":
        return "classification"
    if kind == "targets":
        return "regression"
    first = outputs[0].shape
    return "classification" if len(first) == 2 and first[1] != 1 else "regression"


def _convert(source: Path, precision: str, feeds: dict[str, np.ndarray], out: Path) -> None:
    if precision == "fp16":
        to_fp16(source, out)
    elif any(
        node.op_type == "Conv" for node in onnx.load(str(source)).graph.node
    ):  # dynamic ConvInteger is slow on CPU
        calibration = [
            {k: v[i : i + 8] for k, v in feeds.items()}
            for i in range(0, min(CALIBRATION_ROWS, len(next(iter(feeds.values())))), 8)
        ]
        to_int8_static(source, out, calibration)
    else:
        to_int8_dynamic(source, out)


def _scores(outputs: np.ndarray) -> str:
    """What a classifier's outputs are: `probabilities` (rows of non-negative values summing to 1, as
    after a Softmax) or `logits` (anything else); the gateway applies a softmax to logits only."""
    rows = outputs.astype(np.float64)
    is_probability = (rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3)
    return "probabilities" if is_probability else "logits"


def _params(path: Path) -> int:
    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer))


def _example(feeds: dict[str, np.ndarray]) -> dict[str, list] | None:
    """The first evaluation row per input (what profiling repeats), if small enough to keep in the manifest."""
    if sum(v[:1].size for v in feeds.values()) > EXAMPLE_MAX_VALUES:
        return None
    return {name: value[:1].tolist() for name, value in feeds.items()}


def import_models(request: ImportRequest) -> tuple[FamilySection, list[str]]:
    """Check, convert, evaluate and write the family; returns its section and what was left out (and why)."""
    family = request.family
    if not SAFE_NAME.match(family):
        raise ImportRefused(
            f"family name {family!r} is not a safe identifier; accepted: a lowercase letter, then up to "
            "39 lowercase letters, digits or underscores (it names files, models and URLs)"
        )
    existing = read_manifest(request.repo, missing_ok=True)
    if family in existing.families and not request.replace:
        raise ImportRefused(f"family {family!r} is already in {request.repo}; accepted: another name, or --replace")
    if request.task is not None and request.task not in TASKS:
        raise ImportRefused(f"task {request.task!r}; accepted: {', '.join(TASKS)}")
    if not request.models:
        raise ImportRefused("no model given; accepted: one or more --onnx MODEL.onnx")
    signatures = [signature(path) for path in request.models]
    inputs, outputs = signatures[0]
    for path, (ins, outs) in zip(request.models[1:], signatures[1:], strict=True):
        if (ins, outs) != (inputs, outputs):
            raise ImportRefused(
                f"{path} has inputs {[s.to_json() for s in ins]} and outputs {[s.to_json() for s in outs]}; "
                f"{request.models[0]} has {[s.to_json() for s in inputs]} and {[s.to_json() for s in outputs]}; "
                "accepted: models with the same signature (names, dtypes, shapes)"
            )
    feeds, truth_kind, truth = load_eval(request.eval_set, inputs)
    task = request.task or _infer_task(outputs, truth_kind)
    first = outputs[0]
    if task == "classification" and (len(first.shape) != 2 or first.shape[1] == 1):
        raise ImportRefused(
            f"a classifier's first output ({first.name}) has shape {list(first.shape)}; accepted: [n, classes] "
            "scores or probabilities (or --task regression, with targets)"
        )
    if (task == "classification" and truth_kind == "targets") or (task == "regression" and truth_kind == "labels"):
        raise ImportRefused(
            f"{request.eval_set} holds {truth_kind}, which do not measure {task}; accepted: labels for "
            "classification, targets for regression"
        )
    labels = None
    if request.labels:
        labels = [line.strip() for line in request.labels.read_text(encoding="utf-8").splitlines() if line.strip()]
        width = outputs[0].shape[1] if len(outputs[0].shape) == 2 else -1
        if task != "classification" or (width != -1 and width != len(labels)):
            raise ImportRefused(
                f"{request.labels} has {len(labels)} labels; accepted: one per class of a classifier's "
                f"first output ({width if width != -1 else 'any number of'} classes)"
            )
    largest = max(request.models, key=lambda p: p.stat().st_size)
    if truth is None:  # measured against the largest model: agreement with it, or RMSE against it
        truth = run_model(largest, feeds)
        truth = truth.argmax(axis=1) if task == "classification" else truth
        metric = "agreement" if task == "classification" else "rmse_vs_reference"
    else:
        metric = "accuracy" if task == "classification" else "rmse"
    left_out: list[str] = []
    total = len(request.models) * 3
    with (
        Progress(total, f"import {family}", unit="variant") as progress,
        tempfile.TemporaryDirectory() as tmp,
        new_version(request.repo) as stage,
    ):
        variants, scores = [], set()
        for kind, source in zip(_kinds(request.models), request.models, strict=True):
            reference = run_model(source, feeds)
            if labels and reference.ndim == 2 and reference.shape[1] != len(labels):  # a dynamic class axis
                raise ImportRefused(
                    f"{request.labels} has {len(labels)} labels; {source} gives {reference.shape[1]} classes; "
                    "accepted: one label per class"
                )
            scores.add(_scores(reference) if task == "classification" else "")
            for precision in ("fp32", "fp16", "int8"):
                name = variant_name(family, kind, precision)
                path = Path(tmp) / f"{name}.onnx"
                note, parity = "", None
                try:
                    if precision == "fp32":
                        shutil.copyfile(source, path)
                        produced = reference
                    else:
                        _convert(source, precision, feeds, path)
                        produced = run_model(path, feeds)
                        ok, parity, note = close_enough(reference, produced, task, precision)
                        if not ok:
                            raise ValueError(f"too far from {source.name}: {note}")
                except Exception as error:  # conversion or parity: reported, never written
                    left_out.append(f"{name}: {type(error).__name__}: {error}")
                    progress.log(f"[import] {name} left out: {error}")
                    progress.update(1)
                    continue
                value, se = metric_of(produced, task, truth)
                stored = repository.add_variant(stage, name, path, inputs, outputs, rows_per_request=1)
                variants.append(
                    VariantEntry(
                        name=name,
                        kind=kind,
                        precision=precision,
                        **stored,
                        params=_params(stage / stored["onnx"]),
                        metrics={metric: value},
                        standard_errors={metric: se},
                        parity=parity,
                        source="imported",
                    )
                )
                progress.log(f"[import] {name}: {metric} {value:.4f} ± {se:.4f}{'; ' + note if note else ''}")
                progress.update(1, note=name)
        contract = {
            **({"labels": labels} if labels else {}),
            **(
                {"scores": "probabilities" if scores == {"probabilities"} else "logits"}
                if task == "classification"
                else {}
            ),
            **({"example_inputs": ex} if (ex := _example(feeds)) else {}),
        }
        section = FamilySection(
            task=task,
            metric=metric,
            higher_is_better=metric in ("accuracy", "agreement"),
            inputs=inputs,
            outputs=outputs,
            variants=tuple(variants),
            rows_per_request=1,
            contract=contract,
            adapter="tensor",
            dataset={
                "source": str(request.eval_set),
                "rows": len(truth),
                "measured_against": truth_kind or f"the outputs of {largest.name}",
            },
        )
        if not variants:
            raise ImportRefused(f"no variant of {family} could be written: {'; '.join(left_out)}")
        repository.write_family(stage, family, section)
    if request.register:
        repository.register_in_bentoml(request.repo, read_manifest(request.repo))
    return section, left_out
