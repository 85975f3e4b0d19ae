"""The Triton model repository written from the profiled synthetic FlexServe repository."""

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from serving.repository import load_repository
from serving.triton.repository import preferred_batch_sizes, write_triton_repository


def _config(folder) -> pb.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), pb.ModelConfig())


def test_portable_flavour_has_every_variant_and_a_router_per_family(profiled_repo, tmp_path):
    names = write_triton_repository(profiled_repo, tmp_path / "models")
    repo = load_repository(profiled_repo)
    assert set(names) == {v.name for f in repo.families for v in repo.variants(f)} | {
        f"{f}_router" for f in repo.families
    }
    config = _config(tmp_path / "models" / "rnn_full_fp32")
    assert config.backend == "python" and not any(t.HasField("reshape") for t in config.input)
    variant = next(v for v in repo.variants("rnn") if v.name == "rnn_full_fp32")
    assert config.parameters["sha256"].string_value == variant.sha256
    assert (tmp_path / "models" / "rnn_full_fp32" / "1" / "model.onnx").stat().st_ino == variant.path.stat().st_ino
    assert (tmp_path / "models" / "rnn_full_fp32" / "1" / "model.py").read_text().count("VariantModel") == 1
    # The variant's queue takes a request's timeout; its warmup sample covers its inputs, as sent.
    assert config.dynamic_batching.default_queue_policy.allow_timeout_override
    (sample,) = config.model_warmup
    assert {name: list(i.dims) for name, i in sample.inputs.items()} == {"TOKENS": [1], "LENGTHS": [1]}
    router = _config(tmp_path / "models" / "rnn_router")
    assert {"TEXT", "LATENCY_BUDGET_MS"} <= {t.name for t in router.input if t.optional}
    assert not router.model_warmup and not router.HasField("dynamic_batching")  # it reads the timeout itself
    assert [t.name for t in router.output] == ["LOGITS", "VARIANT", "PREDICTED_TO_MEET"]
    assert "RouterModel" in (tmp_path / "models" / "rnn_router" / "1" / "model.py").read_text()


def test_native_flavour_links_the_onnx_file_and_reshapes_per_row_scalars(profiled_repo, tmp_path):
    write_triton_repository(profiled_repo, tmp_path / "native", flavour="native")
    folder = tmp_path / "native" / "rnn_distilled_int8"
    config = _config(folder)
    assert config.platform == "onnxruntime_onnx" and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert "tensorrt" in (folder / "config.pbtxt").read_text()  # offered as a commented-out choice
    assert [t.name for t in config.input if t.HasField("reshape")] == ["LENGTHS"]
    assert (folder / "1" / "model.onnx").stat().st_size > 0
    recsys = _config(tmp_path / "native" / "recsys_full_fp32")
    assert recsys.output[0].HasField("reshape")  # RATING: one value per row
    assert recsys.dynamic_batching.default_queue_policy.allow_timeout_override and recsys.model_warmup


def test_dynamic_batching_prefers_sizes_where_a_row_costs_half_or_less():
    latency = {"1": {"p50": 1.0}, "4": {"p50": 1.5}, "16": {"p50": 9.0}, "64": {"p50": 20.0}}
    assert preferred_batch_sizes(latency, 64) == [4, 64]  # 16 rows cost 0.56 each: not preferred
    assert preferred_batch_sizes(latency, 16) == [4]
    assert preferred_batch_sizes(None, 64) == []


def test_bad_flavour_and_writing_over_the_source(profiled_repo, tmp_path):
    with pytest.raises(ValueError, match="portable, native"):
        write_triton_repository(profiled_repo, tmp_path / "x", flavour="tensorrt")
    with pytest.raises(ValueError, match="somewhere else"):
        write_triton_repository(profiled_repo, profiled_repo)
