"""The contract between the halves: the manifest's typed sections, digests, dtypes, Triton configs."""

import json

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from contract.dtypes import dtype, from_onnx
from contract.files import sha256_file
from contract.manifest import Manifest, ManifestError, TensorSpec, read_manifest, write_manifest
from contract.triton_config import max_batch_rows, variant_config

SECTION = {
    "task": "classification",
    "metric": "accuracy",
    "higher_is_better": True,
    "dataset": {"source": "synthetic"},
    "inputs": [
        {"name": "TOKENS", "dtype": "int64", "shape": [-1, -1]},
        {"name": "LENGTHS", "dtype": "int64", "shape": [-1]},
    ],
    "outputs": [{"name": "LOGITS", "dtype": "float32", "shape": [-1, 2]}],
    "rows_per_request": 1,
    "contract": {"labels": ["no", "yes"]},
    "preprocessing": {"vocab": {"path": "v.json", "sha256": "ab", "size_bytes": 3}},
    "training": {},
    "variants": [
        {
            "name": "t_full_fp32",
            "kind": "full",
            "precision": "fp32",
            "onnx": "t/1/model.onnx",
            "sha256": "cd",
            "size_bytes": 10,
            "params": 5,
            "metrics": {"accuracy": 0.8},
            "latency_ms": {"1": {"p50": 1.0, "p95": 2.0, "p99": 3.0}},
            "future_key": [1],
        }
    ],
    "a_key_from_a_newer_writer": {"kept": True},
}


def test_a_manifest_round_trips_through_its_typed_sections_keeping_unknown_keys(tmp_path):
    manifest = Manifest.from_json({"schema_version": 1, "families": {"t": SECTION}})
    section = manifest.families["t"]
    assert section.inputs[1] == TensorSpec("LENGTHS", "int64", (-1,))
    assert section.preprocessing["vocab"].sha256 == "ab" and section.variant("t_full_fp32").params == 5
    written = write_manifest(tmp_path, manifest)
    assert written.updated_at is not None
    again = json.loads((tmp_path / "manifest.json").read_text())["families"]["t"]
    assert again == SECTION  # byte-for-byte the same content, untyped keys included
    assert read_manifest(tmp_path).families["t"] == section


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"schema_version": 2, "families": {}}, "schema_version 2"),
        (
            {"schema_version": 1, "families": {"t": {**SECTION, "task": "ranking"}}},
            "task must be one of classification, regression",
        ),
        ({"schema_version": 1, "families": {"t": {"metric": "x"}}}, "malformed"),
    ],
)
def test_a_bad_manifest_names_its_problem(data, problem):
    with pytest.raises(ManifestError, match=problem):
        Manifest.from_json(data)


def test_a_missing_manifest_says_how_to_build_one(tmp_path):
    with pytest.raises(ManifestError, match="flexserve train"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path, missing_ok=True).families == {}


def test_sha256_of_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_one_dtype_table_for_numpy_onnx_and_triton():
    assert dtype("float32").triton == "FP32" and dtype(np.dtype("int64")).triton_config == "TYPE_INT64"
    assert dtype("object").triton_config == "TYPE_STRING" and from_onnx("tensor(float16)") == "float16"
    with pytest.raises(ValueError, match="complex64"):
        dtype("complex64")


def _parse(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())


def test_a_native_variant_config_excludes_the_batch_axis_and_reshapes_per_row_scalars():
    inputs = (TensorSpec("TOKENS", "int64", (-1, -1)), TensorSpec("LENGTHS", "int64", (-1,)))
    config = _parse(variant_config("t_full_fp32", inputs, (TensorSpec("LOGITS", "float32", (-1, 2)),), 1))
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    tokens, lengths = config.input
    assert list(tokens.dims) == [-1] and not tokens.HasField("reshape")
    assert list(lengths.dims) == [1] and lengths.HasField("reshape") and list(lengths.reshape.shape) == []
    assert config.HasField("dynamic_batching") and not config.instance_group  # Triton places it


def test_a_portable_variant_config_runs_in_the_python_backend_with_its_parameters():
    text = variant_config(
        "r",
        (TensorSpec("X", "float32", (-1, 4)),),
        (TensorSpec("RATING", "float32", (-1,)),),
        1682,
        "portable",
        preferred_batch_sizes=[4, 16],
        parameters={"sha256": "ab"},
    )
    config = _parse(text)
    assert config.backend == "python" and config.max_batch_size == max_batch_rows(1682) == 8 * 1682
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert (
        config.parameters["sha256"].string_value == "ab"
        and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    )
    assert not config.output[0].HasField("reshape")  # the Python model reshapes per-row scalars itself
    with pytest.raises(ValueError, match="portable, native"):
        variant_config("r", (), (), 1, "tensorrt")


def test_a_variant_config_lets_a_request_timeout_shorten_its_queue_wait_and_warms_up():
    from contract.triton_config import QUEUE_TIMEOUT_US, WARMUP_SAMPLE
    from serving.policy import MAX_LATENCY_BUDGET_MS

    inputs = (TensorSpec("TOKENS", "int64", (-1, -1)), TensorSpec("LENGTHS", "int64", (-1,)))
    outputs = (TensorSpec("LOGITS", "float32", (-1, 2)),)
    for flavour in ("native", "portable"):
        text = variant_config("t_full_fp32", inputs, outputs, 1, flavour, preferred_batch_sizes=[4])
        config = _parse(text)
        policy = config.dynamic_batching.default_queue_policy
        assert config.dynamic_batching.HasField("default_queue_policy") and policy.allow_timeout_override
        assert policy.timeout_action == pb.ModelQueuePolicy.REJECT  # protobuf's default: not in the text
        # Not 0: Triton takes a request's timeout only when it is shorter than the default.
        assert policy.default_timeout_microseconds == QUEUE_TIMEOUT_US == MAX_LATENCY_BUDGET_MS * 1000
        (sample,) = config.model_warmup
        assert sample.name == WARMUP_SAMPLE and sample.batch_size == 1 and sample.count == 1
        assert set(sample.inputs) == {"TOKENS", "LENGTHS"}
        tokens, lengths = sample.inputs["TOKENS"], sample.inputs["LENGTHS"]
        assert tokens.data_type == lengths.data_type == pb.TYPE_INT64
        assert list(tokens.dims) == [1] and list(lengths.dims) == [1]  # [-1] -> [1]; LENGTHS as on the wire
        assert tokens.zero_data and lengths.zero_data
    assert "allow_timeout_override: true" in text and "model_warmup" in text


def test_warmup_samples_match_each_input_and_skip_optional_ones():
    from contract.triton_config import TensorConfig, render

    inputs = [
        TensorConfig("IMAGES", "float32", (1, 28, 28)),
        TensorConfig("TEXT", "object", (-1,)),
        TensorConfig("MASK", "bool", (4, -1)),
        TensorConfig("LATENCY_BUDGET_MS", "float32", (1,), optional=True),
    ]
    text = render("m", inputs=inputs, outputs=[], max_batch_size=8, dynamic_batching=(), warmup=True)
    (sample,) = _parse(text).model_warmup
    assert {name: (pb.DataType.Name(i.data_type), list(i.dims)) for name, i in sample.inputs.items()} == {
        "IMAGES": ("TYPE_FP32", [1, 28, 28]),
        "TEXT": ("TYPE_STRING", [1]),  # zero_data: empty strings (random_data would be empty strings too)
        "MASK": ("TYPE_BOOL", [4, 1]),
    }
    assert all(i.WhichOneof("input_data_type") == "zero_data" for i in sample.inputs.values())
    # No queue policy unless asked, and only with dynamic batching.
    assert not _parse(text).dynamic_batching.HasField("default_queue_policy")
    with pytest.raises(ValueError, match="dynamic_batching"):
        render("m", inputs=inputs, outputs=[], max_batch_size=0, queue_timeout_us=1000)
    images = (TensorSpec("IMAGES", "float32", (-1, 1, 28, 28)),)
    bare = _parse(variant_config("t", images, (), 1, warmup=False))
    assert not bare.model_warmup and bare.dynamic_batching.default_queue_policy.allow_timeout_override
