"""Bring your own model: `flexserve import` on ONNX files built here (loadtest/byom.py), then the
imported family served by budget on the gateway's Open Inference Protocol and friendly endpoints,
including a variant that fails at serve time. Real ONNX Runtime; no server process."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from contract.layout import live_dir, version_of
from contract.manifest import read_manifest
from contract.sessions import open_session
from loadtest.byom import BIG_FAILS_BELOW, LABELS, SMALL_FAILS_BELOW, write_demo_models
from loadtest.profile import ProfileSettings, profile
from training.importing import ImportRefused, ImportRequest, import_models

FAST_PROFILE = ProfileSettings(warmup_runs=2, min_runs=10, seconds_per_point=0.01)
VARIANTS = [f"tabular_{k}_{p}" for k in ("big", "small") for p in ("fp32", "fp16", "int8")]


def imported_repo(root, task="classification", family="tabular", hidden=512, fail_below=False):
    models = write_demo_models(root / family, task=task, rows=400, hidden=hidden, fail_below=fail_below)
    repo = root / "repo"
    request = ImportRequest(
        family, (models.big, models.small), models.eval_set, repo, labels=models.labels, register=False
    )
    section, left_out = import_models(request)
    profile(repo, FAST_PROFILE, [family], register=False)
    return repo, models, section, left_out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """`tabular`, and `trap`: the same models, but NaN below a first feature of -100 (small) or -1000 (big)."""
    root = tmp_path_factory.mktemp("byom")
    imported = imported_repo(root)
    imported_repo(root, family="trap", fail_below=True)
    return imported


@pytest.fixture(scope="module")
def client(classifier, gateway_client):
    with gateway_client(classifier[0]) as test_client:
        yield test_client


def rows(n=2, first=0.5):
    features = np.random.default_rng(1).normal(size=(n, 20)).astype(np.float32)
    features[:, 0] = first
    return features


def v2(features, **parameters):
    tensor = {"name": "FEATURES", "shape": list(features.shape), "datatype": "FP32", "data": features.ravel().tolist()}
    return {"inputs": [tensor], "parameters": parameters}


def test_every_model_becomes_three_measured_variants_in_a_new_version(classifier):
    repo, models, section, left_out = classifier
    assert left_out == [] and [v.name for v in section.variants] == VARIANTS
    assert section.adapter == "tensor" and section.metric == "accuracy" and section.contract["labels"] == list(LABELS)
    metric = {v.name: v.metrics["accuracy"] for v in section.variants}
    with np.load(models.eval_set) as data:
        features, labels = data["FEATURES"], data["labels"]
    for name in ("tabular_big_fp32", "tabular_small_fp16"):  # measured in ONNX Runtime on the eval rows
        outputs = open_session(live_dir(repo) / section.variant(name).onnx, threads=1).run(None, {"FEATURES": features})
        assert metric[name] == pytest.approx((outputs[0].argmax(axis=1) == labels).mean())
    assert metric["tabular_big_fp32"] > metric["tabular_small_fp32"] + 0.05
    assert all(v.source == "imported" for v in section.variants)
    assert len(section.contract["example_inputs"]["FEATURES"][0]) == 20  # what profiling repeats
    served = read_manifest(repo).families["tabular"]
    assert version_of(repo) == "000004" and all(v.latency_ms for v in served.variants)  # 2 imports, 2 profiles
    fp16 = onnx.load(str(live_dir(repo) / served.variant("tabular_big_fp16").onnx))
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in fp16.graph.initializer}


def test_open_inference_protocol_metadata_names_the_tensors_and_routing(client):
    meta = client.get("/v2/models/tabular").json()
    assert meta["inputs"] == [{"name": "FEATURES", "datatype": "FP32", "shape": [-1, 20]}]
    assert meta["outputs"] == [{"name": "OUTPUT", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["labels"] == list(LABELS) and "min_accuracy" in meta["parameters"]["routing_parameters"]
    assert sorted(meta["parameters"]["variants"]) == sorted(VARIANTS)
    assert client.get("/v2/models/tabular/ready").json() == {"name": "tabular", "ready": True}


def test_a_loose_budget_gets_the_accurate_model_and_a_tight_one_the_fast_one(client, classifier):
    repo = classifier[0]
    features = rows()
    loose = client.post("/v2/models/tabular/infer", json=v2(features, latency_budget_ms=1000)).json()
    tight = client.post("/v2/models/tabular/infer", json=v2(features, latency_budget_ms=0.01)).json()
    assert loose["parameters"]["variant"].startswith("tabular_big")
    assert tight["parameters"]["variant"].startswith("tabular_small") and not tight["parameters"]["budget_met"]
    for answer in (loose, tight):
        chosen = read_manifest(repo).families["tabular"].variant(answer["parameters"]["variant"])
        direct = open_session(live_dir(repo) / chosen.onnx, threads=1).run(None, {"FEATURES": features})[0]
        (output,) = answer["outputs"]
        assert output["name"] == "OUTPUT" and output["shape"] == [2, 3]
        np.testing.assert_allclose(np.reshape(output["data"], (2, 3)), direct, rtol=1e-5, atol=1e-6)
    floor = v2(features, latency_budget_ms=0.01, min_accuracy=0.8)  # the big model's, not the small one's
    assert client.post("/v2/models/tabular/infer", json=floor).json()["parameters"]["variant"].startswith("tabular_big")


def test_the_friendly_endpoint_answers_labels(client):
    features = rows(3)
    answer = client.post("/v1/predict/tabular", json={"inputs": {"FEATURES": features.tolist()}}).json()
    tensors = client.post("/v2/models/tabular/infer", json=v2(features, variant=answer["variant"])).json()
    best = np.reshape(tensors["outputs"][0]["data"], (3, 3)).argmax(axis=1)
    assert [p["label"] for p in answer["predictions"]] == [LABELS[c] for c in best]


@pytest.mark.parametrize(
    "body, field, status",
    [  # 400: the schema at /docs.json refuses it; 422: the schema accepts it, this model does not
        (lambda: v2(np.zeros((1, 19), np.float32)), "FEATURES", 422),
        (lambda: {**v2(rows()), "inputs": [{**v2(rows())["inputs"][0], "datatype": "INT64"}]}, "FEATURES", 422),
        (lambda: {**v2(rows()), "inputs": [{**v2(rows())["inputs"][0], "name": "X"}]}, "X", 422),
        (lambda: v2(rows(), max_rmse=0.1), "max_rmse", 422),
        (lambda: v2(rows(), latency_budget_ms="soon"), "parameters.latency_budget_ms", 400),
        (lambda: {"inputs": "FEATURES"}, "inputs", 400),
        (lambda: {**v2(rows()), "inputs": [{**v2(rows())["inputs"][0], "datatype": "FP8"}]}, "inputs[0].datatype", 400),
        (lambda: {**v2(rows()), "model": "tabular"}, "model", 400),
    ],
)
def test_bad_tensor_requests_name_the_field(client, body, field, status):
    response = client.post("/v2/models/tabular/infer", json=body())
    assert response.status_code == status and response.json()["error"]["field"] == field, response.text


def test_an_unknown_model_is_a_404(client):
    assert client.post("/v2/models/nope/infer", json=v2(rows())).status_code == 404
    assert client.get("/v2/models/nope").status_code == 404


def benched(client) -> dict[str, float]:
    return {v["name"]: v["benched_s"] for v in client.get("/v1/variants").json()["families"]["trap"]["variants"]}


TRAP = [name.replace("tabular", "trap") for name in VARIANTS]


def test_when_every_variant_fails_the_request_is_refused_and_nothing_benched(client):
    before = benched(client)
    response = client.post("/v2/models/trap/infer", json=v2(rows(1, first=BIG_FAILS_BELOW * 2)))
    error = response.json()["error"]
    assert response.status_code == 422 and error["field"] == "inputs"
    assert "every trap variant that could serve it failed" in error["problem"] and "NaN" in error["problem"]
    assert all(benched(client)[v] <= before[v] for v in TRAP)  # no bench started
    assert client.post("/v2/models/trap/infer", json=v2(rows())).status_code == 200  # still serving


def test_a_variant_that_fails_is_benched_and_the_request_answered_by_another(client):
    trap = rows(1, first=(SMALL_FAILS_BELOW + BIG_FAILS_BELOW) / 2)  # NaN in the small model only
    answer = client.post("/v2/models/trap/infer", json=v2(trap, latency_budget_ms=0.01))
    assert answer.status_code == 200, answer.text
    parameters = answer.json()["parameters"]
    assert parameters["variant"].startswith("trap_big") and "benched" in parameters["reason"]
    assert parameters["failed_variants"] and all("small" in v for v in parameters["failed_variants"])
    assert np.isfinite(answer.json()["outputs"][0]["data"]).all()
    out = benched(client)
    assert all(out[v] > 0 for v in TRAP if "small" in v) and all(out[v] == 0 for v in TRAP if "big" in v)
    # Benched, the small variants are passed over by a tight budget until their bench ends.
    fine = client.post("/v2/models/trap/infer", json=v2(rows(), latency_budget_ms=0.01)).json()
    assert fine["parameters"]["variant"].startswith("trap_big")


def test_a_regressor_is_measured_by_rmse_and_answers_values(tmp_path):
    import asyncio

    from serving.gateway import Gateway, GatewayConfig, RequestContext

    repo, _, section, left_out = imported_repo(tmp_path, task="regression", family="scores", hidden=32)
    assert section.metric == "rmse" and not section.higher_is_better and section.task == "regression"
    rmse = {v.name: v.metrics["rmse"] for v in section.variants}
    assert left_out == [] and rmse["scores_big_fp32"] < rmse["scores_small_fp32"] < 1.0  # targets have std 1
    gateway = Gateway(GatewayConfig(repo=repo, parallelism=1, watch_s=0))
    try:
        body = {"inputs": {"FEATURES": rows(2).tolist()}}
        floor = (rmse["scores_big_fp32"] + rmse["scores_small_fp32"]) / 2  # met by the big model only
        answer, _ = asyncio.run(gateway.infer("scores", body, RequestContext(0.01, quality_floor=floor)))
        assert answer["variant"].startswith("scores_big") and len(answer["predictions"]) == 2
        assert isinstance(answer["predictions"][0]["value"], float)
        assert gateway.family("scores").floor_field == "max_rmse"
    finally:
        gateway.close()


def test_an_import_beside_other_families_keeps_them_and_replace_is_explicit(classifier, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(classifier[0], repo, symlinks=True)
    models = classifier[1]
    request = ImportRequest("other", (models.small,), models.eval_set, repo, register=False)
    import_models(request)
    families = read_manifest(repo).families
    assert (
        set(families) == {"tabular", "trap", "other"} and families["tabular"].variants[0].latency_ms
    )  # kept, profiled
    with pytest.raises(ImportRefused, match=r"already in .*--replace"):
        import_models(request)
    import_models(ImportRequest("other", (models.big,), models.eval_set, repo, register=False, replace=True))
    assert [v.kind for v in read_manifest(repo).families["other"].variants] == ["big"] * 3
    assert not (live_dir(repo) / "other_small_fp32").exists()  # the replaced family's files are gone
