"""Write a Triton model repository from a FlexServe one (`flexserve triton repo`).

Two flavours, from the same manifest:

- `portable` (default): every variant as a Python-backend model (`model.py` runs the ONNX file
  in ONNX Runtime, after checking its sha256), plus one router model per family. Runs on the
  Triton server in the nvidia-pytriton wheel (Python backend only) and on any Triton.
- `native`: every variant with `platform: "onnxruntime_onnx"` for the official Triton images
  (GPU hosts): the ONNX file is linked in, `instance_group` is KIND_GPU, and the TensorRT
  FP16 accelerator is written as a commented-out choice (it compiles engines at load time,
  minutes per model, and changes numerics: enable it after measuring). Routers are the same
  Python models.

Dynamic batching from the profiles: `preferred_batch_size` lists the profiled batch sizes at
which a row costs at most half of what it costs alone (where batching pays), and there is no
queue delay, so a request never waits for a batch to fill: tight budgets stay tight.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from serving.repository import Repository, load_repository

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "float16": "TYPE_FP16"}
FLAVOURS = ("portable", "native")
VARIANT_MODEL_PY = '"""FlexServe variant: see serving/triton/models.py."""\nfrom serving.triton.models import VariantModel as TritonPythonModel  # noqa: F401\n'
ROUTER_MODEL_PY = '"""FlexServe router: see serving/triton/models.py."""\nfrom serving.triton.models import RouterModel as TritonPythonModel  # noqa: F401\n'


def router_name(family: str) -> str:
    return f"{family}_router"


def _tensor(name: str, dtype: str, dims: list[int], optional: bool = False, scalar_rows: bool = False) -> str:
    extra = "\n    optional: true" if optional else ""
    if scalar_rows:  # one value per row: [n, 1] on the wire, [n] for the ONNX model (native backend)
        extra += "\n    reshape: { shape: [ ] }"
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(str(d) for d in dims)} ]{extra}\n  }}'


def _block(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _parameters(values: dict[str, str]) -> str:
    items = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())
    return f"parameters [\n{items}\n]\n"


def max_batch_rows(section: dict) -> int:
    rows = int(section.get("rows_per_request", 1))
    return 64 if rows == 1 else 8 * rows


def preferred_batch_sizes(variant: dict, limit: int) -> list[int]:
    latency = {int(b): s["p50"] for b, s in variant.get("latency_ms", {}).items()}
    if 1 not in latency:
        return []
    alone = latency[1]
    return [b for b in sorted(latency) if 1 < b <= limit and latency[b] / b <= 0.5 * alone]


def _variant_tensors(section: dict, native: bool) -> tuple[list[str], list[str]]:
    # The Python-backend model reshapes per-row scalars itself; the native backend needs `reshape`.
    inputs = [_tensor(s["name"], TRITON_TYPES[s["dtype"]], s["shape"][1:] or [1],
                      scalar_rows=native and len(s["shape"]) == 1) for s in section["inputs"]]
    out = section["outputs"][0]
    outputs = [_tensor(out["name"], TRITON_TYPES[out["dtype"]], out["shape"][1:] or [1],
                       scalar_rows=native and len(out["shape"]) == 1)]
    return inputs, outputs


def variant_config(section: dict, variant: dict, root: Path, flavour: str) -> str:
    limit = max_batch_rows(section)
    inputs, outputs = _variant_tensors(section, native=flavour == "native")
    preferred = preferred_batch_sizes(variant, limit)
    batching = (f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n}}\n"
                if preferred else "dynamic_batching { }\n")
    head = f'name: "{variant["name"]}"\n'
    if flavour == "native":
        head += 'platform: "onnxruntime_onnx"\n'
        tail = ('instance_group [ { kind: KIND_GPU count: 1 } ]\n'
                "# TensorRT with FP16 (compiles an engine per model at load; measure before enabling):\n"
                "# optimization { execution_accelerators { gpu_execution_accelerator : [ {\n"
                '#   name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }\n')
    else:
        head += 'backend: "python"\n'
        pad = str(section.get("contract", {}).get("tokenizer", {}).get("pad_id", 0))
        tail = ('instance_group [ { kind: KIND_CPU count: 1 } ]\n'
                + _parameters({"onnx_path": str(root / variant["onnx"]), "sha256": variant["sha256"], "threads": "1",
                               "pad_id": pad}))
    return (head + f"max_batch_size: {limit}\n" + _block("input", inputs) + _block("output", outputs)
            + batching + tail)


def router_config(family: str, section: dict, root: Path, default_budget_ms: float = 200.0) -> str:
    inputs = [_tensor(s["name"], TRITON_TYPES[s["dtype"]], s["shape"], optional=family != "cnn")
              for s in section["inputs"]]
    if family == "rnn":
        inputs.append(_tensor("TEXT", "TYPE_STRING", [-1], optional=True))
    if family == "recsys":
        inputs += [_tensor("USER_ID", "TYPE_INT64", [1], optional=True),
                   _tensor("ITEM_IDS", "TYPE_INT64", [-1], optional=True)]
    inputs.append(_tensor("LATENCY_BUDGET_MS", "TYPE_FP32", [1], optional=True))
    out = section["outputs"][0]
    dims = out["shape"] if len(out["shape"]) > 1 else [-1, 1]
    outputs = [_tensor(out["name"], TRITON_TYPES[out["dtype"]], dims),
               _tensor("VARIANT", "TYPE_STRING", [1]), _tensor("BUDGET_MET", "TYPE_BOOL", [1])]
    return (f'name: "{router_name(family)}"\nbackend: "python"\nmax_batch_size: 0\n'
            + _block("input", inputs) + _block("output", outputs)
            + "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
            + _parameters({"family": family, "flexserve_repo": str(root), "default_budget_ms": f"{default_budget_ms:g}"}))


def _write(folder: Path, config: str, model_py: str | None = None, onnx: Path | None = None) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    if model_py is not None:
        (folder / "1" / "model.py").write_text(model_py)
    if onnx is not None:
        try:
            os.link(onnx, folder / "1" / "model.onnx")
        except OSError:
            shutil.copy2(onnx, folder / "1" / "model.onnx")


def write_triton_repository(source: Path | Repository, out: Path, flavour: str = "portable",
                            families: list[str] | None = None) -> list[str]:
    """Write `out` (replacing the models it writes); returns the model names."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    repo = source if isinstance(source, Repository) else load_repository(source)
    root = repo.root.resolve()
    out = Path(out)
    if out.resolve() == root:
        raise ValueError(f"write the Triton repository somewhere else than the FlexServe repository ({root})")
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for family in families or repo.families:
        section = repo.family(family)
        for variant in section["variants"]:
            config = variant_config(section, variant, root, flavour)
            if flavour == "native":
                _write(out / variant["name"], config, onnx=root / variant["onnx"])
            else:
                _write(out / variant["name"], config, VARIANT_MODEL_PY)
            names.append(variant["name"])
        _write(out / router_name(family), router_config(family, section, root), ROUTER_MODEL_PY)
        names.append(router_name(family))
    return names
