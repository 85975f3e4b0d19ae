import numpy as np
import onnx
import torch

from contract.sessions import open_session
from training.variants import gemm_to_matmul, to_fp16, to_int8_static


def _linear_model(path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3, bias=False)).eval()
    torch.onnx.export(
        model,
        (torch.zeros(2, 6),),
        str(path),
        input_names=["X"],
        output_names=["Y"],
        dynamic_axes={"X": {0: "b"}, "Y": {0: "b"}},
        dynamo=False,
    )
    return model


def test_gemm_rewrite_keeps_the_outputs(tmp_path):
    model = _linear_model(tmp_path / "m.onnx")
    rewritten = gemm_to_matmul(onnx.load(str(tmp_path / "m.onnx")))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Gemm" not in ops and ops.count("MatMul") == 2
    onnx.save(rewritten, str(tmp_path / "r.onnx"))
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(
        open_session(tmp_path / "r.onnx").run(None, {"X": x})[0], model(torch.from_numpy(x)).detach().numpy(), atol=1e-6
    )


def test_fp16_variant_keeps_fp32_inputs_and_outputs(tmp_path):
    _linear_model(tmp_path / "m.onnx")
    to_fp16(tmp_path / "m.onnx", tmp_path / "h.onnx")
    sess = open_session(tmp_path / "h.onnx")
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    weights = onnx.load(str(tmp_path / "h.onnx")).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)


def _weights_quantized(path) -> dict[str, bool]:
    """Per weighted node: whether its weight comes through a DequantizeLinear (QDQ int8)."""
    graph = onnx.load(str(path)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {
        n.op_type + str(i): n.input[1] in dequantized
        for i, n in enumerate(graph.node)
        if n.op_type in ("Gemm", "MatMul")
    }


def test_static_int8_can_keep_the_first_layer_in_fp32(tmp_path):
    model = _linear_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    feeds = [{"X": rng.normal(size=(8, 6)).astype(np.float32)} for _ in range(4)]
    to_int8_static(tmp_path / "m.onnx", tmp_path / "all.onnx", feeds)
    to_int8_static(tmp_path / "m.onnx", tmp_path / "kept.onnx", feeds, keep_first_layer=True)
    assert list(_weights_quantized(tmp_path / "all.onnx").values()) == [True, True]
    assert list(_weights_quantized(tmp_path / "kept.onnx").values()) == [False, True]
    x = np.concatenate([f["X"] for f in feeds])  # inside the calibrated ranges
    expected = model(torch.from_numpy(x)).detach().numpy()
    got = open_session(tmp_path / "kept.onnx").run(None, {"X": x})[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
