"""The Open Inference Protocol's JSON tensors and the checks against the manifest's specs (pure numpy)."""

import numpy as np
import pytest

from contract.manifest import TensorSpec
from serving.errors import InvalidRequestError
from serving.tensors import MAX_ELEMENTS, conform, parse_inputs, to_json

SPECS = (TensorSpec("X", "float32", (-1, 3)), TensorSpec("IDS", "int64", (-1,)))


def tensor(name="X", shape=(2, 3), datatype="FP32", data=None):
    data = list(range(int(np.prod(shape)))) if data is None else data
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data}


def refused(call) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as error:
        call()
    return error.value


def test_flat_and_nested_data_give_the_same_array():
    flat = parse_inputs([tensor()])["X"]
    nested = parse_inputs([tensor(data=[[0, 1, 2], [3, 4, 5]])])["X"]
    assert flat.dtype == np.float32 and flat.shape == (2, 3)
    np.testing.assert_array_equal(flat, nested)


def test_bytes_tensors_carry_strings_as_utf8():
    texts = parse_inputs([tensor("TEXT", (2,), "BYTES", ["été", "b"])])["TEXT"]
    assert texts.dtype == object and texts.tolist() == ["été".encode(), b"b"]


@pytest.mark.parametrize(
    "inputs, field, problem",
    [
        ({"X": 1}, "inputs", "expected a non-empty list"),
        ([], "inputs", "expected a non-empty list"),
        (["X"], "inputs[0]", "is not an object"),
        ([tensor(name="")], "inputs[0].name", "got ''"),
        ([tensor(), tensor()], "inputs[1].name", "given twice"),
        ([tensor(shape=(2, -3))], "inputs[0].shape", "got [2, -3]"),
        ([tensor(shape=(MAX_ELEMENTS + 1,), data=[])], "inputs[0].shape", "too many"),
        ([tensor(datatype="FLOAT")], "inputs[0].datatype", "got 'FLOAT'"),
        ([tensor(data="abc")], "inputs[0].data", "expected a list"),
        ([tensor(data=[1, 2, 3])], "inputs[0].data", "3 values for shape [2, 3]"),
        ([tensor(data=["a"] * 6)], "inputs[0].data", "not FP32"),
        ([tensor(data=[0, 1, 2, 3, 4, float("nan")])], "inputs[0].data", "NaN"),
        ([tensor("TEXT", (1,), "BYTES", [3])], "inputs[0].data", "not BYTES"),
    ],
)
def test_malformed_tensors_name_the_field_and_the_problem(inputs, field, problem):
    error = refused(lambda: parse_inputs(inputs))
    assert error.field == field and problem in error.problem and error.accepted


def good():
    return {"X": np.zeros((2, 3), np.float32), "IDS": np.array([1, 2], np.int64)}


@pytest.mark.parametrize(
    "change, field, problem, accepted",
    [
        (lambda n: n.update(Y=np.zeros(2)), "Y", "is not an input", "X FP32 [-1, 3]"),
        (lambda n: n.pop("IDS"), "IDS", "is missing", "IDS INT64 [-1]"),
        (lambda n: n.update(IDS=np.array([1.0, 2.0])), "IDS", "is FP64", "INT64"),
        (lambda n: n.update(IDS=np.array([1, 2], np.uint64)), "IDS", "is uint64", "INT64"),
        (lambda n: n.update(X=np.zeros((2, 4), np.float32)), "X", "shape [2, 4]", "shape [-1, 3]"),
        (lambda n: n.update(X=np.zeros(6, np.float32)), "X", "shape [6]", "shape [-1, 3]"),
        (lambda n: n.update(IDS=np.array([1], np.int64)), "IDS", "1 rows, another input 2", "same number of rows"),
        (lambda n: n.update(X=np.zeros((0, 3), np.float32), IDS=np.zeros(0, np.int64)), "X", "no rows", "one row"),
    ],
)
def test_tensors_that_do_not_fit_the_model_are_refused(change, field, problem, accepted):
    named = good()
    change(named)
    error = refused(lambda: conform(named, SPECS))
    assert (error.field, problem in error.problem, accepted in error.accepted) == (field, True, True)


def test_conforming_tensors_come_back_contiguous_in_spec_order():
    named = {"IDS": np.array([5, 6], np.int64), "X": np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::2]}
    feeds = conform(named, SPECS)
    assert list(feeds) == ["X", "IDS"] and feeds["X"].flags.c_contiguous


def test_outputs_go_back_flat_with_their_shape_and_datatype():
    out = to_json("P", np.array([[0.5, 1.5]], np.float32))
    assert out == {"name": "P", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1.5]}
    again = parse_inputs([out])["P"]  # what the gateway answers, a client can send back
    np.testing.assert_array_equal(again, [[0.5, 1.5]])
    assert to_json("T", np.array([b"x"], dtype=object))["data"] == ["x"]
