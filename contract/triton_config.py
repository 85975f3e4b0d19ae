"""Triton `config.pbtxt` files, built as tritonclient's `ModelConfig` protobuf and rendered with
protobuf's text format (never formatted by hand), so that every field is one Triton knows.

The training half writes one beside each ONNX file of the model repository (the native flavour,
for the official Triton images); `flexserve triton repo` writes both flavours with the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from contract.dtypes import dtype
from contract.manifest import TensorSpec

FLAVOURS = ("portable", "native")
# Rows one batch may hold: 64 single-row requests, or 8 typical requests of a many-row family.
SINGLE_ROW_MAX_BATCH = 64
TYPICAL_REQUESTS_PER_BATCH = 8


def max_batch_rows(rows_per_request: int) -> int:
    """Triton's `max_batch_size` for a family, in model rows."""
    return SINGLE_ROW_MAX_BATCH if rows_per_request <= 1 else TYPICAL_REQUESTS_PER_BATCH * rows_per_request


@dataclass(frozen=True)
class TensorConfig:
    """One input or output as Triton sees it (`dims` exclude the batch axis when batching)."""

    name: str
    dtype: str  # numpy name, "object" for strings
    dims: tuple[int, ...]
    optional: bool = False
    scalar_rows: bool = False  # one value per row: [n, 1] on the wire, [n] for the model (`reshape: []`)

    @classmethod
    def batched(cls, spec: TensorSpec, reshape_scalars: bool = True, optional: bool = False) -> TensorConfig:
        """A manifest spec without its batch axis; a per-row scalar travels as [1]."""
        scalar = len(spec.shape) == 1
        return cls(spec.name, spec.dtype, tuple(spec.shape[1:]) or (1,), optional, scalar and reshape_scalars)


def render(
    name: str,
    *,
    inputs: Sequence[TensorConfig],
    outputs: Sequence[TensorConfig],
    max_batch_size: int,
    platform: str | None = None,
    backend: str | None = None,
    instance_kind: str | None = None,
    dynamic_batching: Sequence[int] | None = None,
    parameters: Mapping[str, str] | None = None,
    comment: str = "",
) -> str:
    """A config.pbtxt. `dynamic_batching`: None for none, () for `dynamic_batching { }`, or the
    preferred batch sizes. `instance_kind`: "KIND_CPU", "KIND_GPU", or None for Triton's default."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=name, max_batch_size=max_batch_size)
    if platform:
        config.platform = platform
    if backend:
        config.backend = backend
    for target, tensors in ((config.input, inputs), (config.output, outputs)):
        for t in tensors:
            tensor = target.add(name=t.name, data_type=pb.DataType.Value(dtype(t.dtype).triton_config), dims=t.dims)
            if t.scalar_rows:
                tensor.reshape.SetInParent()  # shape [ ]: the model takes [n]
            if t.optional:
                tensor.optional = True
    if instance_kind:
        config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(instance_kind), count=1)
    if dynamic_batching is not None:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.preferred_batch_size.extend(dynamic_batching)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    text = text_format.MessageToString(config)
    return text + ("".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines()) if comment else "")


# The TensorRT accelerator compiles an engine per model at load (minutes) and changes numerics.
TENSORRT_HINT = """TensorRT with FP16 (compiles an engine per model at load; measure before enabling):
optimization { execution_accelerators { gpu_execution_accelerator : [ {
  name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }"""


def variant_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    rows_per_request: int,
    flavour: str = "native",
    *,
    preferred_batch_sizes: Sequence[int] = (),
    parameters: Mapping[str, str] | None = None,
    instance_kind: str | None = None,
) -> str:
    """One variant's config. native: Triton's ONNX Runtime backend reads `1/model.onnx`; portable: a
    Python-backend model (FlexServe's `VariantModel`) runs it in ONNX Runtime, taking `parameters`."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    native = flavour == "native"
    # The Python-backend model reshapes per-row scalars itself; the native backend needs `reshape`.
    tensors = {
        "inputs": [TensorConfig.batched(s, reshape_scalars=native) for s in inputs],
        "outputs": [TensorConfig.batched(s, reshape_scalars=native) for s in outputs],
    }
    return render(
        name,
        **tensors,
        max_batch_size=max_batch_rows(rows_per_request),
        platform="onnxruntime_onnx" if native else None,
        backend=None if native else "python",
        instance_kind=instance_kind or (None if native else "KIND_CPU"),
        dynamic_batching=tuple(preferred_batch_sizes),
        parameters=parameters,
        comment=TENSORRT_HINT if native and instance_kind == "KIND_GPU" else "",
    )
