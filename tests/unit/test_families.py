"""The family adapters alone (pure numpy): the generic `tensor` adapter that serves any imported model
from its manifest entry, the choice of adapter, and the built-in adapters' tensor API checks."""

import numpy as np
import pytest

from contract.manifest import FamilySection, TensorSpec
from serving.errors import InvalidRequestError
from serving.families import ADAPTERS, adapter_name, family_adapter
from serving.families.tensor import TensorFamily
from serving.families.text import TextFamily
from serving.preprocess import MAX_BATCH


def section(task="classification", outputs=None, **contract) -> FamilySection:
    return FamilySection(
        task=task,
        metric="accuracy" if task == "classification" else "rmse",
        higher_is_better=task == "classification",
        inputs=(TensorSpec("x", "float32", (-1, 2)), TensorSpec("ids", "int64", (-1,))),
        outputs=outputs or (TensorSpec("scores", "float32", (-1, 3)),),
        variants=(),
        contract=contract,
        adapter="tensor",
    )


def refused(call) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as error:
        call()
    return error.value


BODY = {"inputs": {"x": [[0.5, 1.0], [2.0, 3.0]], "ids": [1, 2]}}


def test_the_friendly_body_names_each_input_and_becomes_typed_feeds():
    decoded = TensorFamily("mine", section()).decode(BODY)
    assert decoded.rows == 2 and decoded.feeds["x"].dtype == np.float32 and decoded.feeds["ids"].dtype == np.int64


@pytest.mark.parametrize(
    "body, field, problem, accepted",
    [
        ({}, "inputs", "is missing", "x (float32, shape [-1, 2]), ids (int64, shape [-1])"),
        ({"inputs": [1, 2]}, "inputs", "expected an object", "an object"),
        ({"inputs": {"x": [[1.0, 2.0]]}}, "inputs.ids", "is missing", "ids (int64"),
        ({"inputs": {**BODY["inputs"], "z": [1]}}, "inputs.z", "is not an input", "x (float32"),
        ({"inputs": {**BODY["inputs"], "ids": ["a", "b"]}}, "inputs.ids", "not an array of int64", "ids (int64"),
        ({"inputs": {"x": [[1.0, 2.0, 3.0]], "ids": [1]}}, "inputs.x", "has shape [1, 3]", "shape [-1, 2]"),
        ({"inputs": {"x": [[1.0, 2.0]] * 65, "ids": [1] * 65}}, "inputs.x", "65 rows", f"1 to {MAX_BATCH} rows"),
    ],
)
def test_bad_friendly_bodies_name_the_field(body, field, problem, accepted):
    error = refused(lambda: TensorFamily("mine", section()).decode(body))
    assert (error.field, problem in error.problem, accepted in error.accepted) == (field, True, True), error


def test_a_classifier_answers_classes_with_its_labels():
    family = TensorFamily("mine", section(labels=["a", "b", "c"]))
    decoded = family.decode(BODY)
    answer = family.encode([np.array([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]], np.float32)], decoded)
    assert [p["label"] for p in answer["predictions"]] == ["b", "a"]
    assert answer["predictions"][0]["probability"] == pytest.approx(np.exp(5) / (np.exp(5) + 2), abs=1e-6)


def test_probabilities_from_the_model_are_not_softmaxed_again():
    family = TensorFamily("mine", section(labels=["a", "b", "c"], scores="probabilities"))
    answer = family.encode([np.array([[0.2, 0.7, 0.1]], np.float32)], family.decode(BODY))
    assert answer["predictions"][0] == {"label": "b", "class_id": 1, "probability": pytest.approx(0.7)}


def test_a_regressor_answers_values_and_anything_else_its_named_outputs():
    regressor = TensorFamily("mine", section("regression", (TensorSpec("y", "float32", (-1, 1)),)))
    decoded = regressor.decode(BODY)
    assert regressor.encode([np.array([[1.25], [2.5]], np.float32)], decoded) == {
        "predictions": [{"value": 1.25}, {"value": 2.5}]
    }
    two = (TensorSpec("y", "float32", (-1, 2)), TensorSpec("z", "int64", (-1,)))
    other = TensorFamily("mine", section("regression", two))
    answer = other.encode([np.ones((2, 2), np.float32), np.array([7, 8])], decoded)
    assert answer == {"outputs": {"y": [[1.0, 1.0], [1.0, 1.0]], "z": [7, 8]}}


def test_profiling_repeats_the_recorded_example_row_and_fills_inputs_without_one():
    family = TensorFamily("mine", section(example_inputs={"ids": [[4]]}))
    feeds = family.typical_feeds(16, np.random.default_rng(0))
    assert feeds["ids"].tolist() == [[4]] * 16 or feeds["ids"].reshape(-1).tolist() == [4] * 16
    assert feeds["x"].shape == (16, 2) and feeds["x"].dtype == np.float32
    assert family.example_body(np.random.default_rng(0)) == {"inputs": {"ids": [[4]]}}


def test_the_tensor_api_bounds_the_rows_of_a_request():
    family = TensorFamily("mine", section())
    many = MAX_BATCH + 1
    error = refused(
        lambda: family.decode_tensors({"x": np.zeros((many, 2), np.float32), "ids": np.zeros(many, np.int64)})
    )
    assert error.field == "x" and f"1 to {MAX_BATCH} rows" == error.accepted


def test_the_adapter_comes_from_the_manifest_or_the_built_in_name():
    plain = FamilySection.from_json({**section().to_json(), "adapter": None})
    assert adapter_name("cnn", plain) == "image" and adapter_name("rnn", plain) == "text"
    assert adapter_name("anything", plain) == "tensor" and adapter_name("cnn", section()) == "tensor"
    assert set(ADAPTERS) == {"image", "text", "recommender", "multitask_text", "tensor"}
    odd = FamilySection.from_json({**section().to_json(), "adapter": "audio"})
    with pytest.raises(ValueError, match=r"adapter 'audio'.*image, text, recommender, multitask_text, tensor"):
        family_adapter("mine", odd)


def text_family() -> TextFamily:
    vocab = ["<pad>", "<unk>", "good", "bad"]
    text = FamilySection(
        task="classification",
        metric="accuracy",
        higher_is_better=True,
        inputs=(TensorSpec("TOKENS", "int64", (-1, -1)), TensorSpec("LENGTHS", "int64", (-1,))),
        outputs=(TensorSpec("LOGITS", "float32", (-1, 2)),),
        variants=(),
        contract={
            "labels": ["rotten", "fresh"],
            "tokenizer": {"pattern": r"\w+", "lowercase": True, "max_tokens": 8, "pad_id": 0, "unk_id": 1},
        },
    )
    return TextFamily("rnn", text, artifact=lambda name: vocab)


def test_text_takes_raw_text_or_token_ids_within_the_vocabulary():
    family = text_family()
    raw = family.decode_tensors({"TEXT": np.array([b"good good", b"nope"], dtype=object)})
    assert raw.feeds["TOKENS"].tolist() == [[2, 2], [1, 0]] and raw.feeds["LENGTHS"].tolist() == [2, 1]
    ids = family.decode_tensors({"TOKENS": np.array([[2, 3]]), "LENGTHS": np.array([2])})
    assert ids.rows == 1
    error = refused(lambda: family.decode_tensors({"TOKENS": np.array([[2, 4]]), "LENGTHS": np.array([2])}))
    assert (error.field, error.accepted) == ("TOKENS", "ids 0 to 3")
    error = refused(lambda: family.decode_tensors({"TOKENS": np.array([[2, 3]]), "LENGTHS": np.array([3])}))
    assert (error.field, error.accepted) == ("LENGTHS", "1 to 2 per row")
    error = refused(lambda: family.decode_tensors({"TEXT": np.array([b"!!"], dtype=object)}))
    assert error.field.startswith("TEXT")  # the raw tensor's name, not the friendly field's


def test_a_raw_input_of_the_wrong_datatype_is_refused_by_name():
    error = refused(lambda: text_family().decode_tensors({"TEXT": np.array([3, 4], dtype=np.int64)}))
    assert (error.field, error.problem, error.accepted) == ("TEXT", "is INT64", "BYTES")


def test_a_floor_is_named_as_the_family_measures_quality():
    classifier = TensorFamily("mine", section())
    assert classifier.floor({"min_accuracy": 0.9, "other": 1}) == 0.9 and classifier.floor({}) is None
    error = refused(lambda: classifier.floor({"max_rmse": 0.5}))
    assert error.field == "max_rmse" and "mine is measured by accuracy (higher is better)" in error.problem
    regressor = TensorFamily("mine", section("regression", (TensorSpec("y", "float32", (-1, 1)),)))
    error = refused(lambda: regressor.floor({"min_accuracy": 0.9}))
    assert error.accepted == "max_rmse: the highest rmse you accept, or none"


def test_the_example_request_as_tensors_is_what_the_tensor_api_takes():
    rng = np.random.default_rng(0)
    text = text_family()
    tensors = text.example_tensors(rng)
    assert list(tensors) == ["TEXT"] and text.decode_tensors(tensors).rows == 1  # the raw input, as on Triton
    mine = TensorFamily("mine", section(example_inputs={"x": [[0.5, 1.0]], "ids": [3]}))
    assert mine.decode_tensors(mine.example_tensors(rng)).feeds["ids"].tolist() == [3]
