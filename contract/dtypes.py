"""One table of tensor element types: the manifest's numpy names and what ONNX Runtime and Triton
call the same type (in `config.pbtxt` as `TYPE_<name>`, on the wire as `<name>`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dtype:
    numpy: str  # the manifest's name, e.g. "float32"
    onnx: str  # ONNX Runtime's NodeArg.type, e.g. "tensor(float)"
    triton: str  # Triton's wire name, e.g. "FP32" (config.pbtxt: "TYPE_FP32")

    @property
    def triton_config(self) -> str:
        return "TYPE_STRING" if self.triton == "BYTES" else f"TYPE_{self.triton}"


DTYPES = {
    d.numpy: d
    for d in (
        Dtype("float32", "tensor(float)", "FP32"),
        Dtype("float16", "tensor(float16)", "FP16"),
        Dtype("float64", "tensor(double)", "FP64"),
        Dtype("int64", "tensor(int64)", "INT64"),
        Dtype("int32", "tensor(int32)", "INT32"),
        Dtype("int16", "tensor(int16)", "INT16"),
        Dtype("int8", "tensor(int8)", "INT8"),
        Dtype("uint8", "tensor(uint8)", "UINT8"),
        Dtype("bool", "tensor(bool)", "BOOL"),
        Dtype("object", "tensor(string)", "BYTES"),  # strings: numpy object arrays of bytes
    )
}
_BY_ONNX = {d.onnx: d for d in DTYPES.values()}


def dtype(name: str | np.dtype) -> Dtype:
    """The row for a numpy dtype (or its name); a clear error for a type FlexServe does not carry."""
    key = np.dtype(name).name if not isinstance(name, str) else name
    if key not in DTYPES:
        raise ValueError(f"tensor type {key!r} is not supported: expected one of {', '.join(DTYPES)}")
    return DTYPES[key]


def from_onnx(onnx_type: str) -> str:
    """The numpy name of an ONNX Runtime type string ("tensor(float)" -> "float32"); unknown ones unchanged."""
    row = _BY_ONNX.get(onnx_type)
    return row.numpy if row else onnx_type
