"""`flexserve import`'s checks, each refusal naming the file, the problem and what is accepted; and
conversions that miss their tolerance left out. Tiny ONNX models built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from contract.manifest import read_manifest
from loadtest.byom import write_demo_models
from training.importing import ImportRefused, ImportRequest, import_models


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("demo"), rows=200, hidden=8)


def linear(path, weights, batch="batch", input_type=TensorProto.FLOAT, features=20):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["FEATURES", "w"], ["OUTPUT"])],
        "linear",
        [helper.make_tensor_value_info("FEATURES", input_type, [batch, features])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, [batch, weights.shape[1]])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def request(tmp_path, demo, **changes) -> ImportRequest:
    fields = {"family": "mine", "models": (demo.small,), "eval_set": demo.eval_set, "repo": tmp_path / "repo"}
    return ImportRequest(**{**fields, "register": False, **changes})


def refusal(tmp_path, demo, **changes) -> str:
    with pytest.raises(ImportRefused) as error:
        import_models(request(tmp_path, demo, **changes))
    assert not (tmp_path / "repo" / "current").exists()  # nothing written
    return str(error.value)


def eval_file(tmp_path, **arrays):
    path = tmp_path / "eval.npz"
    np.savez(path, **arrays)
    return path


X = np.zeros((4, 20), np.float32)


@pytest.mark.parametrize(
    "changes, says",
    [
        (lambda t, d: {"family": "My-Model"}, "not a safe identifier; accepted: a lowercase letter"),
        (lambda t, d: {"models": ()}, "no model given; accepted: one or more --onnx"),
        (lambda t, d: {"models": (t / "none.onnx",)}, "does not exist; accepted: the path of an .onnx file"),
        (lambda t, d: {"models": (d.labels,)}, "is not a valid ONNX model"),
        (lambda t, d: {"task": "ranking"}, "task 'ranking'; accepted: classification, regression"),
        (lambda t, d: {"eval_set": t / "none.npz"}, "does not exist; accepted: an .npz"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(tmp_path, demo, changes, says):
    assert says in refusal(tmp_path, demo, **changes(tmp_path, demo))


def test_models_must_have_a_dynamic_batch_axis_and_one_signature_and_known_types(tmp_path, demo):
    fixed = linear(tmp_path / "fixed.onnx", np.ones((20, 3)), batch=1)
    assert "no dynamic batch axis; accepted:" in refusal(tmp_path, demo, models=(fixed,))
    narrow = linear(tmp_path / "narrow.onnx", np.ones((10, 3)), features=10)
    assert "accepted: models with the same signature" in refusal(tmp_path, demo, models=(demo.small, narrow))
    odd = linear(tmp_path / "odd.onnx", np.ones((20, 3)), input_type=TensorProto.UINT16)
    message = refusal(tmp_path, demo, models=(odd,))
    assert "FEATURES is uint16; accepted: tensors of float32" in message


@pytest.mark.parametrize(
    "arrays, says",
    [
        (
            {"labels": np.zeros(4, np.int64)},
            "input 'FEATURES' is missing; accepted: FEATURES (float32, shape [-1, 20])",
        ),
        ({"FEATURES": X, "extra": X}, "array 'extra' is not an input of the model"),
        ({"FEATURES": X.astype(np.float64)}, "FEATURES is float64; accepted: float32"),
        ({"FEATURES": np.zeros((4, 19), np.float32)}, "shape [4, 19]; accepted: [-1, 20]"),
        ({"FEATURES": X[:0]}, "has no rows"),
        ({"FEATURES": X, "labels": np.zeros(3, np.int64)}, "labels has 3 rows, the inputs 4"),
        ({"FEATURES": X, "labels": np.zeros(4, np.float32)}, "accepted: integer class ids"),
        ({"FEATURES": X, "labels": np.zeros(4, np.int64), "targets": np.zeros(4)}, "both labels and targets"),
    ],
)
def test_the_evaluation_set_must_fit_the_model(tmp_path, demo, arrays, says):
    assert says in refusal(tmp_path, demo, eval_set=eval_file(tmp_path, **arrays))


def test_labels_must_match_the_classes_and_the_truth_the_task(tmp_path, demo):
    two = tmp_path / "two.txt"
    two.write_text("a\nb\n")
    assert "has 2 labels; accepted: one per class of a classifier's first output (3 classes)" in refusal(
        tmp_path, demo, labels=two
    )
    targets = eval_file(tmp_path, FEATURES=X, targets=np.zeros(4, np.float32))
    assert "holds targets, which do not measure classification" in refusal(
        tmp_path, demo, eval_set=targets, task="classification"
    )


def test_a_conversion_beyond_its_tolerance_is_left_out_and_reported(tmp_path, demo):
    weights = np.random.default_rng(0).normal(size=(20, 3))
    weights[19, 2] = 1000.0  # one outlier: per-tensor int8 rounds every other weight to 0 or a step of ~8
    spiky = linear(tmp_path / "spiky.onnx", weights)
    features = np.random.default_rng(1).normal(size=(200, 20)).astype(np.float32)
    features[:, 19] *= 1e-3  # ... while the outlier's feature is tiny, so the small weights decide
    section, left_out = import_models(
        request(tmp_path, demo, models=(spiky,), eval_set=eval_file(tmp_path, FEATURES=features))
    )
    assert [v.precision for v in section.variants] == ["fp32", "fp16"]
    assert section.metric == "agreement" and section.variants[0].metrics["agreement"] == 1.0  # against itself
    (reason,) = left_out
    assert reason.startswith("mine_spiky_int8:") and "top-1 agreement" in reason and "(>= 0.95)" in reason
    assert "mine_spiky_int8" not in {v.name for v in read_manifest(tmp_path / "repo").families["mine"].variants}


def test_a_classifier_needs_class_scores_and_its_parity_is_recorded_as_figures(tmp_path, demo):
    one_column = linear(tmp_path / "one.onnx", np.ones((20, 1)))
    assert "has shape [-1, 1]; accepted: [n, classes] scores" in refusal(
        tmp_path, demo, models=(one_column,), task="classification"
    )
    section, _ = import_models(request(tmp_path, demo))
    assert section.contract["scores"] == "logits"  # the demo MLP ends in a Linear layer
    fp16 = next(v for v in section.variants if v.precision == "fp16")
    assert set(fp16.parity) == {"top1_agreement", "min_top1_agreement"} and fp16.parity["top1_agreement"] >= 0.99


def test_a_model_that_ends_in_a_softmax_is_marked_as_giving_probabilities(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["FEATURES", "w"], ["z"]),
            helper.make_node("Softmax", ["z"], ["OUTPUT"], axis=1),
        ],
        "softmax",
        [helper.make_tensor_value_info("FEATURES", TensorProto.FLOAT, ["batch", 20])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "softmax.onnx")
    features = np.random.default_rng(1).normal(size=(50, 20)).astype(np.float32)
    section, _ = import_models(
        ImportRequest(
            family="soft",
            models=(tmp_path / "softmax.onnx",),
            eval_set=eval_file(tmp_path, FEATURES=features, labels=np.zeros(50, np.int64)),
            repo=tmp_path / "repo",
            register=False,
        )
    )
    assert section.contract["scores"] == "probabilities"


def test_labels_are_checked_against_a_dynamic_class_axis(tmp_path, demo):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["FEATURES", "w"], ["OUTPUT"])],
        "dynamic",
        [helper.make_tensor_value_info("FEATURES", TensorProto.FLOAT, ["batch", 20])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", "classes"])],
        [numpy_helper.from_array(np.ones((20, 4), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "four.onnx")
    assert "has 3 labels; " in refusal(tmp_path, demo, models=(tmp_path / "four.onnx",), labels=demo.labels)
    assert "gives 4 classes; accepted: one label per class" in refusal(
        tmp_path, demo, models=(tmp_path / "four.onnx",), labels=demo.labels
    )
