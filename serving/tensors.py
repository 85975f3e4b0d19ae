"""Tensors on the wire: the Open Inference Protocol's (KServe v2) JSON form, and checks of a named
tensor against the manifest's spec. Pure numpy; every problem is an `InvalidRequestError` naming the
field, the problem and what is accepted.

    {"name": "IMAGES", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0, ...]}

`data` is row-major, flat or nested; BYTES data are strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from contract.dtypes import DTYPES, dtype
from contract.manifest import TensorSpec
from serving.errors import InvalidRequestError

MAX_ELEMENTS = 1 << 22  # per tensor: bounded, whatever the body limit lets through
MAX_DIMS = 32  # numpy's limit (1.x) on an array's dimensions
_BY_TRITON = {d.triton: d for d in DTYPES.values()}
DATATYPES = ", ".join(sorted(_BY_TRITON))


def parse_inputs(inputs: object, field: str = "inputs") -> dict[str, np.ndarray]:
    """A v2 request's `inputs` list as named arrays (shape and datatype as the client declared them)."""
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequestError(
            field,
            f"expected a non-empty list, got {type(inputs).__name__}",
            'a list of {"name", "shape", "datatype", "data"} objects',
        )
    named: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(inputs):
        where = f"{field}[{i}]"
        if not isinstance(tensor, Mapping):
            raise InvalidRequestError(where, "is not an object", 'an object with "name", "shape", "datatype", "data"')
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"{where}.name", f"got {name!r}", "the name of a model input")
        if name in named:
            raise InvalidRequestError(f"{where}.name", f"{name!r} is given twice", "each input once")
        named[name] = _array(tensor, where)
    return named


def _array(tensor: Mapping, where: str) -> np.ndarray:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidRequestError(f"{where}.shape", f"got {shape!r}", "a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise InvalidRequestError(f"{where}.shape", f"has {len(shape)} dimensions", f"at most {MAX_DIMS}")
    size = math.prod(shape)
    if size > MAX_ELEMENTS:
        raise InvalidRequestError(f"{where}.shape", f"{size} elements is too many", f"at most {MAX_ELEMENTS}")
    kind = _BY_TRITON.get(tensor.get("datatype"))
    if kind is None:
        raise InvalidRequestError(f"{where}.datatype", f"got {tensor.get('datatype')!r}", DATATYPES)
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidRequestError(
            f"{where}.data", f"expected a list, got {type(data).__name__}", "the values, row-major, flat or nested"
        )
    try:
        if kind.numpy == "object":
            flat = np.array([_text(v) for v in _flatten(data)], dtype=object)
        else:
            flat = np.asarray(data, dtype=kind.numpy).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequestError(
            f"{where}.data", f"holds a value that is not {kind.triton}", f"{kind.triton} values, row-major"
        ) from None
    if flat.size != size:
        raise InvalidRequestError(
            f"{where}.data", f"{flat.size} values for shape {shape}", f"{size} values (the product of the shape)"
        )
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise InvalidRequestError(f"{where}.data", "holds NaN or infinity", "finite numbers")
    return flat.reshape(shape)


def _flatten(data: list) -> list:
    """Nested lists, row-major, without recursion (however deep a body nests them)."""
    out: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _text(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError("not a string")


def check_dtype(name: str, value: np.ndarray, wanted: str) -> None:
    """`value` (the tensor `name`) has the manifest dtype `wanted`; BYTES arrive as any object array."""
    want = dtype(wanted)
    if value.dtype.name != want.numpy and not (value.dtype.kind == "O" and want.numpy == "object"):
        got = DTYPES[value.dtype.name].triton if value.dtype.name in DTYPES else value.dtype.name
        raise InvalidRequestError(name, f"is {got}", want.triton)


def conform(named: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], extra: str = "") -> dict[str, np.ndarray]:
    """The model's inputs from named arrays, checked against their specs (names, dtypes, shapes, one
    batch size); `extra` names other inputs the caller accepts instead, for the error message."""
    accepted = ", ".join(f"{s.name} {dtype(s.dtype).triton} {list(s.shape)}" for s in specs) + extra
    unknown = sorted(set(named) - {s.name for s in specs})
    if unknown:
        raise InvalidRequestError(unknown[0], "is not an input of this model", accepted)
    feeds, rows = {}, None
    for spec in specs:
        value = named.get(spec.name)
        if value is None:
            raise InvalidRequestError(spec.name, "is missing", accepted)
        check_dtype(spec.name, value, spec.dtype)
        if len(spec.shape) == 1 and value.ndim == 2 and value.shape[1] == 1:
            value = value.reshape(-1)  # a per-row scalar as Triton clients send it: [n, 1]
        if len(value.shape) != len(spec.shape) or any(
            d != -1 and d != got for d, got in zip(spec.shape[1:], value.shape[1:], strict=True)
        ):
            raise InvalidRequestError(
                spec.name, f"has shape {list(value.shape)}", f"shape {list(spec.shape)} (-1: any size)"
            )
        if rows is None:
            rows = value.shape[0]
        elif value.shape[0] != rows:
            raise InvalidRequestError(
                spec.name, f"has {value.shape[0]} rows, another input {rows}", "the same number of rows in every input"
            )
        feeds[spec.name] = np.ascontiguousarray(value)
    if not rows:
        raise InvalidRequestError(specs[0].name, "has no rows", "at least one row")
    return feeds


def to_json(name: str, value: np.ndarray) -> dict:
    """One output tensor in the v2 JSON form (data flat, row-major)."""
    kind = dtype(value.dtype)
    data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value.reshape(-1).tolist()]
    return {"name": name, "shape": list(value.shape), "datatype": kind.triton, "data": data}
