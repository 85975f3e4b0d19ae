"""Write a Triton model repository from a FlexServe one (`flexserve triton repo`).

Two flavours, from the same manifest (configs from `contract/triton_config.py`, the one writer):

- `portable` (default): every variant as a Python-backend model (`model.py` runs the ONNX file,
  linked in beside it, in ONNX Runtime after checking its sha256), plus one router model per family. Runs on the
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
from collections.abc import Mapping
from pathlib import Path

from contract.manifest import FamilySection
from contract.triton_config import FLAVOURS, TensorConfig, max_batch_rows, render, variant_config
from serving.families import ADAPTERS, adapter_name
from serving.policy import DEFAULT_LATENCY_BUDGET_MS
from serving.repository import Repository, load_repository

VARIANT_MODEL_PY = (
    '"""FlexServe variant: see serving/triton/models.py."""\n'
    "from serving.triton.models import VariantModel as TritonPythonModel  # noqa: F401\n"
)
ROUTER_MODEL_PY = (
    '"""FlexServe router: see serving/triton/models.py."""\n'
    "from serving.triton.models import RouterModel as TritonPythonModel  # noqa: F401\n"
)


def router_name(family: str) -> str:
    return f"{family}_router"


def preferred_batch_sizes(latency_ms: Mapping[str, Mapping[str, float]] | None, limit: int) -> list[int]:
    """Profiled batch sizes (<= `limit`) at which a row costs at most half of what it costs alone."""
    latency = {int(b): s["p50"] for b, s in (latency_ms or {}).items()}
    if 1 not in latency:
        return []
    alone = latency[1]
    return [b for b in sorted(latency) if 1 < b <= limit and latency[b] / b <= 0.5 * alone]


def router_config(
    family: str, section: FamilySection, root: Path, default_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS
) -> str:
    """`<family>_router`: the model's inputs (optional when raw inputs can stand in), the raw inputs
    a client may send instead (the family adapter's), the budget; the model's outputs, the variant
    and its prediction."""
    raw = list(ADAPTERS[adapter_name(family, section)].raw_inputs)
    inputs = [TensorConfig(s.name, s.dtype, s.shape, optional=bool(raw)) for s in section.inputs]
    inputs += [*raw, TensorConfig("LATENCY_BUDGET_MS", "float32", (1,), optional=True)]
    outputs = [TensorConfig(o.name, o.dtype, o.shape if len(o.shape) > 1 else (-1, 1)) for o in section.outputs]
    outputs += [TensorConfig("VARIANT", "object", (1,)), TensorConfig("PREDICTED_TO_MEET", "bool", (1,))]
    return render(
        router_name(family),
        inputs=inputs,
        outputs=outputs,
        max_batch_size=0,
        backend="python",
        instance_kind="KIND_CPU",
        parameters={"family": family, "flexserve_repo": str(root), "default_budget_ms": f"{default_budget_ms:g}"},
    )


def _variant_config(family: str, section: FamilySection, name: str, root: Path, flavour: str) -> str:
    variant = section.variant(name)
    rows = section.rows_per_request
    preferred = preferred_batch_sizes(variant.latency_ms, max_batch_rows(rows))
    if flavour == "native":
        return variant_config(
            name,
            section.inputs,
            section.outputs,
            rows,
            "native",
            preferred_batch_sizes=preferred,
            instance_kind="KIND_GPU",
        )
    padded = ADAPTERS[adapter_name(family, section)].padded_inputs(section)
    scalar_rows = [t.name for t in (*section.inputs, *section.outputs) if len(t.shape) == 1]
    parameters = {  # the ONNX file is linked in as 1/model.onnx: a config changes only when its variant does
        "sha256": variant.sha256,
        "threads": "1",
        "scalar_rows": ",".join(scalar_rows),
        "pad": ",".join(f"{name}={value}" for name, value in padded.items()),
    }
    return variant_config(
        name, section.inputs, section.outputs, rows, "portable", preferred_batch_sizes=preferred, parameters=parameters
    )


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


def write_triton_repository(
    source: Path | Repository, out: Path, flavour: str = "portable", families: list[str] | None = None
) -> list[str]:
    """Write `out` (replacing the models it writes); returns the model names."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    repo = source if isinstance(source, Repository) else load_repository(source)
    root = repo.root.resolve()
    out = Path(out)
    owned = [root] if isinstance(source, Repository) else [root, Path(source).resolve()]
    if any(p.is_relative_to(out.resolve()) for p in owned):  # the FlexServe repository itself, or inside `out`
        raise ValueError(f"write the Triton repository somewhere else than the FlexServe repository ({root})")
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for family in families or repo.families:
        section = repo.family(family)
        for variant in section.variants:
            config = _variant_config(family, section, variant.name, root, flavour)
            model_py = None if flavour == "native" else VARIANT_MODEL_PY
            _write(out / variant.name, config, model_py, onnx=root / variant.onnx)
            names.append(variant.name)
        _write(out / router_name(family), router_config(family, section, root), ROUTER_MODEL_PY)
        names.append(router_name(family))
    return names
