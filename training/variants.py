"""Reduced-precision variants of an exported fp32 ONNX model.

- FP16: weights and activations in half precision, inputs and outputs kept fp32 so clients
  do not change. Pays on GPUs (tensor cores); on CPU ORT inserts casts and it is usually
  slower, which the latency profile then shows.
- INT8, dynamic: weights quantised ahead of time, activations at run time. ORT has integer
  kernels for MatMul and LSTM (not Gemm), so Gemm nodes are first rewritten as MatMul + Add;
  embedding tables (Gather) are stored in int8 too.
  Suits the LSTM and the recommender's MLPs.
- INT8, static QDQ: weights and activations quantised with scales calibrated on real
  training rows. The CNN's route: dynamic ConvInteger is slow on CPU.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

PRECISIONS = ("fp32", "fp16", "int8")


def to_fp16(src: Path, dst: Path) -> None:
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Gemm(A, B, C; transB, alpha=beta=1) as MatMul(A, B') + C so that dynamic
    quantisation, which has no Gemm kernel, can quantise it."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in initializers
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        new_weight = numpy_helper.from_array(np.ascontiguousarray(weight), node.input[1] + "_matmul")
        graph.initializer.append(new_weight)
        product = node.output[0] + "_matmul"
        nodes.append(
            helper.make_node("MatMul", [node.input[0], new_weight.name], [product], name=node.name + "_matmul")
        )
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=node.name + "_bias"))
        else:
            nodes[-1].output[0] = node.output[0]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


class _DropPreprocessingAdvice(logging.Filter):
    """ORT advises shape pre-processing on every dynamic quantisation; it changes nothing here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def to_int8_dynamic(src: Path, dst: Path) -> None:
    logging.getLogger().addFilter(_DropPreprocessingAdvice())
    with tempfile.TemporaryDirectory() as tmp:
        rewritten = Path(tmp) / "matmul.onnx"
        onnx.save(gemm_to_matmul(onnx.load(str(src))), str(rewritten))
        quantize_dynamic(
            str(rewritten), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "LSTM", "Gather"]
        )


class _Batches(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def to_int8_static(
    src: Path, dst: Path, calibration: list[dict[str, np.ndarray]], keep_first_layer: bool = False
) -> None:
    """QDQ quantisation, per-channel weights, MinMax scales calibrated on `calibration` feeds.

    `keep_first_layer`: the first weighted layer (the image families' stem convolution, which reads the
    raw 0-255 pixels) stays fp32. Quantised, it cost the full CNN 0.86 points on Fashion-MNIST and the
    digits model 3.94; kept fp32, neither lost any, and the CNN was no slower (README, "Variants")."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        weighted = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in WEIGHTED_OPS]
        if keep_first_layer and weighted and not weighted[0]:
            raise ValueError(f"{src}: its first weighted node has no name, so it cannot be kept out of int8")
        quantize_static(
            str(prepared),
            str(dst),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=weighted[:1] if keep_first_layer else [],
        )
