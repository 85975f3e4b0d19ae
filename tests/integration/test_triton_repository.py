"""The Triton model repository written from the profiled synthetic FlexServe repository."""
import pytest

from serving.repository import load_repository
from serving.triton.repository import preferred_batch_sizes, write_triton_repository


def test_portable_flavour_has_every_variant_and_a_router_per_family(profiled_repo, tmp_path):
    names = write_triton_repository(profiled_repo, tmp_path / "models")
    repo = load_repository(profiled_repo)
    assert set(names) == {v.name for f in repo.families for v in repo.variants(f)} | {
        f"{f}_router" for f in repo.families}
    config = (tmp_path / "models" / "rnn_full_fp32" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "onnx_path" in config and "reshape" not in config
    variant = next(v for v in repo.variants("rnn") if v.name == "rnn_full_fp32")
    assert variant.sha256 in config and str(variant.path) in config
    assert (tmp_path / "models" / "rnn_full_fp32" / "1" / "model.py").read_text().count("VariantModel") == 1
    router = (tmp_path / "models" / "rnn_router" / "config.pbtxt").read_text()
    for tensor in ("TEXT", "LATENCY_BUDGET_MS", "VARIANT", "BUDGET_MET"):
        assert f'name: "{tensor}"' in router
    assert "RouterModel" in (tmp_path / "models" / "rnn_router" / "1" / "model.py").read_text()


def test_native_flavour_links_the_onnx_file_and_reshapes_per_row_scalars(profiled_repo, tmp_path):
    write_triton_repository(profiled_repo, tmp_path / "native", flavour="native")
    folder = tmp_path / "native" / "rnn_distilled_int8"
    config = (folder / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "KIND_GPU" in config and "tensorrt" in config
    assert config.count("reshape: { shape: [ ] }") == 1  # LENGTHS
    assert (folder / "1" / "model.onnx").stat().st_size > 0
    recsys = (tmp_path / "native" / "recsys_full_fp32" / "config.pbtxt").read_text()
    assert "reshape: { shape: [ ] }" in recsys.split("output [")[1]  # RATING


def test_dynamic_batching_prefers_sizes_where_a_row_costs_half_or_less():
    variant = {"latency_ms": {"1": {"p50": 1.0}, "4": {"p50": 1.5}, "16": {"p50": 9.0}, "64": {"p50": 20.0}}}
    assert preferred_batch_sizes(variant, 64) == [4, 64]  # 16 rows cost 0.56 each: not preferred
    assert preferred_batch_sizes(variant, 16) == [4]
    assert preferred_batch_sizes({}, 64) == []


def test_bad_flavour_and_writing_over_the_source(profiled_repo, tmp_path):
    with pytest.raises(ValueError, match="portable, native"):
        write_triton_repository(profiled_repo, tmp_path / "x", flavour="tensorrt")
    with pytest.raises(ValueError, match="somewhere else"):
        write_triton_repository(profiled_repo, profiled_repo)
