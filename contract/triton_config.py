"""Triton `config.pbtxt` files, built as tritonclient's `ModelConfig` protobuf and rendered with
protobuf's text format (never formatted by hand), so that every field is one Triton knows.

The training half writes one beside each ONNX file of the model repository (the native flavour,
for the official Triton images); `flexserve triton repo` writes both flavours with the same code.

Every variant's config also carries:

- a queue policy (`dynamic_batching { default_queue_policy { ... } }`): a request's own `timeout`
  (microseconds; FlexServe sends the time left of its latency budget) replaces the default when it
  is shorter, and a request still queued past it is rejected (`timeout_action: REJECT`, protobuf's
  default value, so the text omits it) with "Request timeout expired" (gRPC UNAVAILABLE, HTTP 503).
  Triton honours a per-request timeout only in a model with dynamic (or sequence) batching whose
  queue policy has `allow_timeout_override: true`, and only while the request waits in the queue:
  one already running is never stopped. The default must not be 0: Triton takes a request's
  timeout only when it is shorter than the default, and 0 (no timeout) is never longer than anything.
- a warmup sample (`model_warmup`): one request of batch 1 with zeros in every required input, its
  variable dimensions set to 1 (for TYPE_STRING, zero_data means empty strings; random_data would
  send empty strings too), run on each instance before the model is ready, so the first real
  request does not pay for the first run. A warmup that fails fails the model's load.
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
# The longest a request may wait in a variant's queue without a timeout of its own: serving's longest
# latency budget (MAX_LATENCY_BUDGET_MS, a minute), in microseconds. Not 0: see the module docstring.
QUEUE_TIMEOUT_US = 60_000_000
WARMUP_SAMPLE = "zeros_batch1"


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
    queue_timeout_us: int | None = None,
    warmup: bool = False,
    parameters: Mapping[str, str] | None = None,
    comment: str = "",
) -> str:
    """A config.pbtxt. `dynamic_batching`: None for none, () for `dynamic_batching { }`, or the
    preferred batch sizes. `queue_timeout_us`: with dynamic batching, the queue policy's default
    timeout, which a request's own `timeout` may shorten (REJECT when it runs out). `warmup`: one
    zero-filled batch-1 sample over the required inputs. `instance_kind`: "KIND_CPU", "KIND_GPU", or
    None for Triton's default."""
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
    if queue_timeout_us is not None:
        if dynamic_batching is None or queue_timeout_us <= 0:
            raise ValueError("a queue timeout needs dynamic_batching and a value > 0 (microseconds)")
        policy = config.dynamic_batching.default_queue_policy
        policy.timeout_action = pb.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = queue_timeout_us
        policy.allow_timeout_override = True
    if warmup:
        sample = config.model_warmup.add(name=WARMUP_SAMPLE, batch_size=1, count=1)
        for t in inputs:
            if not t.optional:
                data = sample.inputs[t.name]
                data.data_type = pb.DataType.Value(dtype(t.dtype).triton_config)
                data.dims.extend(warmup_dims(t.dims))
                data.zero_data = True
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    text = text_format.MessageToString(config)
    return text + ("".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines()) if comment else "")


def warmup_dims(dims: Sequence[int]) -> tuple[int, ...]:
    """A warmup sample's shape: Triton needs every dimension, so a variable one (-1) becomes 1."""
    return tuple(d if d > 0 else 1 for d in dims)


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
    queue_timeout_us: int = QUEUE_TIMEOUT_US,
    warmup: bool = True,
) -> str:
    """One variant's config. native: Triton's ONNX Runtime backend reads `1/model.onnx`; portable: a
    Python-backend model (FlexServe's `VariantModel`) runs it in ONNX Runtime, taking `parameters`.
    Both with the queue policy and the warmup sample of the module docstring."""
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
        queue_timeout_us=queue_timeout_us,
        warmup=warmup,
        parameters=parameters,
        comment=TENSORRT_HINT if native and instance_kind == "KIND_GPU" else "",
    )


# What Triton answers (HTTP, gRPC and BLS alike) when it drops a request whose per-request `timeout`
# ran out in a queue (`default_queue_policy { allow_timeout_override: true }` above).
TIMEOUT_EXPIRED = "Request timeout expired"
