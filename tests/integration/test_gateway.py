"""The BentoML gateway in-process (ASGI), on the profiled synthetic repository: routing, the
JSON contract, and every client error. Real ONNX Runtime sessions; no server process."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from contract.layout import live_dir, new_version
from contract.manifest import read_manifest, write_manifest
from serving.errors import IntegrityError, InvalidRequestError, RepositoryError
from serving.gateway import Gateway, GatewayConfig
from serving.repository import load_repository
from training.data import encode_texts

IMAGE = [[float((r * 28 + c) % 256) for c in range(28)] for r in range(28)]


@pytest.fixture(scope="module")
def client(profiled_repo, gateway_client):
    with gateway_client(profiled_repo, FLEXSERVE_MAX_BODY_BYTES="400000") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def repo(profiled_repo):
    return load_repository(profiled_repo)


def policy_order(repo, family):
    from serving.policy import policy_from_manifest

    policy = policy_from_manifest(family, repo.family(family))
    return policy.variant_names[0], policy.fastest(1)  # a loose budget's: the fastest tied for best


def error_of(response, status=400):
    assert response.status_code == status, response.text
    return response.json()["error"]


# -- the contract -----------------------------------------------------------------------------
def test_classify_image_answers_with_predictions_and_routing_fields(client, repo):
    response = client.post("/v1/classify_image", json={"images": [IMAGE, IMAGE], "latency_budget_ms": 5000})
    assert response.status_code == 200, response.text
    body = response.json()
    labels = repo.family("cnn").contract["labels"]
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert p["label"] == labels[p["class_id"]] and 0 < p["probability"] <= 1
    assert body["variant"] == policy_order(repo, "cnn")[0]  # a loose budget: the fastest tied for best
    assert body["backend"] == "onnxruntime" and body["budget_ms"] == 5000 and body["budget_met"] is True
    assert body["latency_ms"] > 0 and body["reason"]
    assert response.headers["X-FlexServe-Variant"] == body["variant"]
    assert response.headers["X-FlexServe-Budget-Met"] == "true"


def test_answers_equal_a_direct_onnx_runtime_run_of_the_chosen_variant(client, repo):
    import onnxruntime as ort

    body = client.post("/v1/classify_image", json={"images": [IMAGE], "variant": "cnn_distilled_fp32"}).json()
    variant = next(v for v in repo.variants("cnn") if v.name == body["variant"])
    logits = ort.InferenceSession(str(variant.path)).run(None, {"IMAGES": np.array([[IMAGE]], dtype=np.float32)})[0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert body["predictions"][0]["class_id"] == int(probabilities.argmax())
    assert body["predictions"][0]["probability"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_a_tight_budget_gets_a_faster_variant_than_a_loose_one(client, repo):
    best, _ = policy_order(repo, "cnn")
    loose = client.post("/v1/classify_image", json={"images": [IMAGE], "latency_budget_ms": 5000}).json()
    tight = client.post("/v1/classify_image", json={"images": [IMAGE], "latency_budget_ms": 0.001}).json()
    assert loose["variant"] == best
    assert tight["variant"] != best and tight["budget_met"] is False
    assert "no variant fits" in tight["reason"]


def test_the_budget_header_is_used_when_the_body_has_none(client):
    response = client.post("/v1/classify_image", json={"images": [IMAGE]}, headers={"X-Latency-Budget-Ms": "0.001"})
    assert response.status_code == 200 and response.json()["budget_ms"] == 0.001
    default = client.post("/v1/classify_image", json={"images": [IMAGE]}).json()
    assert default["budget_ms"] == GatewayConfig().default_budget_ms


def test_classify_text_tokenises_like_training(client, repo):
    texts = ["A wonderful, moving film.", "dull and far too long"]
    response = client.post("/v1/classify_text", json={"texts": texts, "variant": "rnn_full_fp32"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["label"] for p in body["predictions"]] and body["variant"] == "rnn_full_fp32"
    # The server's tensors equal training's: same ids, and the same answer from the same file.
    import onnxruntime as ort

    vocab = repo.artifact("rnn", "vocab")
    tokens, lengths = encode_texts(texts, vocab)
    variant = next(v for v in repo.variants("rnn") if v.name == "rnn_full_fp32")
    logits = ort.InferenceSession(str(variant.path)).run(None, {"TOKENS": tokens, "LENGTHS": lengths})[0]
    assert [p["class_id"] for p in body["predictions"]] == logits.argmax(1).tolist()


def test_recommend_returns_top_k_from_the_catalogue_or_the_candidates(client, repo):
    catalog = repo.artifact("recsys", "catalog")
    user = int(catalog["users"][0]["user_id"])
    body = client.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
    assert len(body["items"]) == 5 and body["variant"].startswith("recsys_")
    ratings = [item["predicted_rating"] for item in body["items"]]
    assert ratings == sorted(ratings, reverse=True)
    candidates = [int(it["item_id"]) for it in catalog["items"][:4]]
    some = client.post("/v1/recommend", json={"user_id": user, "k": 2, "candidate_item_ids": candidates}).json()
    assert {it["item_id"] for it in some["items"]} <= set(candidates) and len(some["items"]) == 2
    assert all(it["title"] for it in some["items"])


def tensor(name, values, datatype):
    values = np.asarray(values)
    data = values.ravel().tolist() if datatype != "BYTES" else list(values.ravel())
    return {"name": name, "shape": list(values.shape), "datatype": datatype, "data": data}


def test_the_open_inference_protocol_serves_the_built_in_families_as_their_friendly_endpoints(client, repo):
    pinned = {"latency_budget_ms": 5000, "variant": "cnn_full_fp32"}
    image = np.asarray(IMAGE, dtype=np.float32).reshape(1, 1, 28, 28)
    v2 = client.post("/v2/models/cnn/infer", json={"inputs": [tensor("IMAGES", image, "FP32")], "parameters": pinned})
    friendly = client.post("/v1/classify_image", json={"images": [IMAGE], **pinned}).json()
    assert v2.status_code == 200, v2.text
    (logits,) = v2.json()["outputs"]
    assert logits["name"] == "LOGITS" and logits["shape"] == [1, 10] and logits["datatype"] == "FP32"
    assert int(np.argmax(logits["data"])) == friendly["predictions"][0]["class_id"]
    assert (
        v2.json()["parameters"]["variant"] == "cnn_full_fp32" and v2.headers["X-FlexServe-Variant"] == "cnn_full_fp32"
    )

    text = client.post("/v2/models/rnn/infer", json={"inputs": [tensor("TEXT", ["a great film", "dull"], "BYTES")]})
    assert text.status_code == 200 and text.json()["outputs"][0]["shape"] == [2, 2], text.text

    catalog = repo.artifact("recsys", "catalog")
    user = int(catalog["users"][0]["user_id"])
    items = [int(it["item_id"]) for it in catalog["items"][:3]]
    ids = [tensor("USER_ID", [user], "INT64"), tensor("ITEM_IDS", items, "INT64")]
    rated = client.post("/v2/models/recsys/infer", json={"inputs": ids})
    assert rated.status_code == 200 and rated.json()["outputs"][0]["shape"] == [3, 1], rated.text  # as on Triton


@pytest.mark.parametrize(
    "family, inputs, field, problem",
    [
        ("recsys", [tensor("USER_ID", ["abc"], "BYTES")], "USER_ID", "is BYTES"),
        ("rnn", [tensor("TEXT", [5, 6], "INT64")], "TEXT", "is INT64"),
        ("cnn", [tensor("IMAGES", np.zeros((1, 1, 28, 27)), "FP32")], "IMAGES", "has shape [1, 1, 28, 27]"),
        ("cnn", [{"name": "IMAGES", "shape": [1], "datatype": "FP32", "data": [1, 2]}], "inputs[0].data", "2 values"),
    ],
)
def test_bad_open_inference_protocol_tensors_name_the_tensor(client, family, inputs, field, problem):
    # The schema takes any tensor; the model does not: 422
    error = error_of(client.post(f"/v2/models/{family}/infer", json={"inputs": inputs}), 422)
    assert error["field"] == field and problem in error["problem"], error


def test_a_deeply_nested_body_is_a_400_not_a_500(client):
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v2/models/cnn/infer", "/v1/predict/cnn"):
        error = error_of(client.post(path, content=deep, headers={"Content-Type": "application/json"}))
        assert error["field"] == "body"


def test_variants_lists_every_family_with_live_state(client, repo):
    response = client.get("/v1/variants", follow_redirects=False)
    assert response.status_code == 200
    body = response.json()
    assert set(body["families"]) == set(repo.families)
    assert body["families"]["cnn"]["overhead_ms"] > 0  # learned from the requests above
    cnn = body["families"]["cnn"]["variants"]
    assert {v["name"] for v in cnn} == {v.name for v in repo.variants("cnn")}
    for v in cnn:
        assert {"accuracy", "profiled_p50_ms", "predicted_ms", "in_flight", "slowdown"} <= set(v)
        assert v["in_flight"] == 0
    assert client.post("/v1/variants").status_code == 405


def test_variants_within_the_test_splits_noise_are_tied_and_a_loose_budget_gets_the_fastest(client, repo):
    families = client.get("/v1/variants").json()["families"]
    for family, state in families.items():
        section = repo.family(family)
        best = section.variant(state["most_accurate"])
        assert state["tolerance"] == pytest.approx(1.96 * section.standard_error(best))
        assert state["most_accurate"] in state["tied_for_best"]
        assert state["tied_for_best"] == [v["name"] for v in state["variants"] if v["tied_for_best"]]
        for v in state["variants"]:
            gap = abs(v[state["metric"]] - best.metrics[section.metric])
            assert v["tied_for_best"] == (gap <= state["tolerance"] + 1e-12)
            assert v["standard_error"] == pytest.approx(section.standard_error(section.variant(v["name"])))
        p95 = {v["name"]: v["profiled_p95_ms"] for v in state["variants"]}
        assert state["tied_for_best"][0] == min(state["tied_for_best"], key=p95.get)
    image = client.post("/v1/classify_image", json={"images": [IMAGE], "latency_budget_ms": 5000}).json()
    assert image["variant"] == families["cnn"]["tied_for_best"][0]
    if len(families["cnn"]["tied_for_best"]) > 1:
        assert "tied within" in image["reason"]


def test_health_endpoints_follow_the_repository(client):
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").status_code == 200


# -- client errors: 4xx naming the field, never a 500 ---------------------------------------
@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "images"),
        ({"images": "cat.png"}, "images"),
        ({"images": []}, "images"),
        ({"images": [IMAGE] * 65}, "images"),
        ({"images": [[[0.0] * 27] * 28]}, "images[0]"),
        ({"images": [IMAGE, [[0.0] * 28] * 3]}, "images[1]"),
        ({"images": [[["x"] * 28] * 28]}, "images[0]"),
        ({"images": [[[True] * 28] * 28]}, "images"),
        ({"images": [[[256.0] * 28] * 28]}, "images[0]"),
        ({"images": [[[-1.0] * 28] * 28]}, "images[0]"),
        ({"images": [IMAGE], "latency_budget_ms": -5}, "latency_budget_ms"),
        ({"images": [IMAGE], "latency_budget_ms": 0}, "latency_budget_ms"),
        ({"images": [IMAGE], "latency_budget_ms": 1e12}, "latency_budget_ms"),
        ({"images": [IMAGE], "latency_budget_ms": "fast"}, "latency_budget_ms"),
        ({"images": [IMAGE], "latency_budget": 20}, "latency_budget"),  # a typo is refused, not ignored
        ({"images": [IMAGE], "min_accuracy": 1.5}, "min_accuracy"),
        ({"images": [IMAGE], "min_accuracy": "high"}, "min_accuracy"),
        ({"images": [IMAGE], "strict": "yes"}, "strict"),
    ],
)
def test_bad_image_requests(client, body, field):
    error = error_of(client.post("/v1/classify_image", json=body))  # the schema refuses it: 400
    assert error["field"].startswith(field) and error["problem"] and error["accepted"], error
    assert field in error["message"]


@pytest.mark.parametrize("variant", ["cnn_huge_fp64", "rnn_full_fp32"])
def test_a_variant_the_family_lacks_is_a_422(client, variant):
    error = error_of(client.post("/v1/classify_image", json={"images": [IMAGE], "variant": variant}), 422)
    assert error["field"] == "variant" and "cnn_full_fp32" in error["accepted"]


def test_nan_pixels_are_refused(client):
    raw = json.dumps({"images": [[[float("nan")] * 28] * 28]})  # Python writes NaN; JSON has none
    response = client.post("/v1/classify_image", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500


def test_malformed_json_is_a_400(client):
    response = client.post("/v1/classify_image", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "texts"),
        ({"texts": "one string"}, "texts"),
        ({"texts": [""]}, "texts[0]"),
        ({"texts": ["ok", "   "]}, "texts[1]"),
        ({"texts": [42]}, "texts[0]"),
        ({"texts": ["x" * 5001]}, "texts[0]"),
        ({"texts": ["fine"] * 65}, "texts"),
    ],
)
def test_bad_text_requests(client, body, field):
    assert error_of(client.post("/v1/classify_text", json=body))["field"] == field


@pytest.mark.parametrize(
    "body, field, status",
    [  # 400: the schema refuses it; 422: the schema accepts it, the catalogue or the variants do not
        ({}, "user_id", 422),  # the schema takes user_id or ratings (one of them: beyond what it says)
        ({"user_id": "one"}, "user_id", 400),
        ({"user_id": 10**9}, "user_id", 422),
        ({"user_id": 1, "k": 0}, "k", 400),
        ({"user_id": 1, "k": 101}, "k", 400),
        ({"user_id": 1, "k": 3, "candidate_item_ids": [10**9]}, "candidate_item_ids[0]", 422),
        ({"user_id": 1, "k": 3, "candidate_item_ids": ["a"]}, "candidate_item_ids[0]", 400),
        ({"user_id": 1, "k": 3, "candidate_item_ids": []}, "candidate_item_ids", 400),
        ({"user_id": 1, "min_accuracy": 0.9}, "min_accuracy", 400),  # not a field: recsys is measured by RMSE
        ({"user_id": 1, "max_rmse": 0.01}, "max_rmse", 422),
    ],
)
def test_bad_recommend_requests(client, repo, body, field, status):
    catalog = repo.artifact("recsys", "catalog")
    if body.get("user_id") == 1:
        body = {**body, "user_id": int(catalog["users"][0]["user_id"])}
    assert error_of(client.post("/v1/recommend", json=body), status)["field"] == field


def test_k_above_the_candidates_and_duplicate_candidates(client, repo):
    catalog = repo.artifact("recsys", "catalog")
    user, item = int(catalog["users"][0]["user_id"]), int(catalog["items"][0]["item_id"])
    assert (
        error_of(client.post("/v1/recommend", json={"user_id": user, "k": 2, "candidate_item_ids": [item]}), 422)[
            "field"
        ]
        == "k"
    )
    assert (
        error_of(client.post("/v1/recommend", json={"user_id": user, "k": 1, "candidate_item_ids": [item, item]}))[
            "field"
        ]
        == "candidate_item_ids"
    )


@pytest.mark.parametrize("value", ["soon", "0", "1e9", "nan"])
def test_bad_budget_header(client, value):  # the header's schema says (0, 60000]: a 400
    response = client.post("/v1/classify_image", json={"images": [IMAGE]}, headers={"X-Latency-Budget-Ms": value})
    assert error_of(response)["field"] == "X-Latency-Budget-Ms"


def test_a_tensor_with_more_dimensions_than_numpy_holds_is_a_400(client):
    tensor = {"name": "IMAGES", "shape": [1] * 33, "datatype": "FP32", "data": [0.0]}
    error = error_of(client.post("/v2/models/cnn/infer", json={"inputs": [tensor]}))
    assert error["field"] == "inputs[0].shape"


def test_predict_refuses_a_field_the_family_does_not_take(client):
    error = error_of(client.post("/v1/predict/rnn", json={"texts": ["fine"], "latency_budget": 20}), 422)
    assert error["field"] == "latency_budget" and "latency_budget_ms" in error["accepted"]


def test_time_before_the_server_counts_against_the_budget(client, repo):
    import time

    body = {"images": [IMAGE], "latency_budget_ms": 5000}
    fresh = client.post("/v1/classify_image", json=body, headers={"X-Request-Start": f"t={time.time():.6f}"})
    assert fresh.status_code == 200 and fresh.json()["budget_met"] is True
    # Sent 6 s ago (here in milliseconds, as some proxies stamp it): the 5 s budget is gone already.
    stale = client.post(
        "/v1/classify_image", json=body, headers={"X-Request-Start": f"t={int(time.time() * 1e3) - 6000}"}
    )
    assert stale.status_code == 200 and stale.json()["budget_met"] is False
    # Nothing fits: the variant predicted fastest now (by profile, or a close second when the slowdowns
    # learned on this noisy machine reorder two variants whose profiles are within noise).
    assert stale.json()["reason"].startswith("no variant fits 5000 ms"), stale.json()["reason"]
    assert stale.json()["variant"] != policy_order(repo, "cnn")[0]


@pytest.mark.parametrize(
    "stamp, problem, accepted, status",
    [
        ("yesterday", "is not a time", "t=<Unix time>", 400),
        ("-1", "is not a time", "t=<Unix time>", 400),
        ("t=1000000000", "s ago", "check the client's clock", 422),  # well-formed, but 2001
    ],
)
def test_bad_request_start_header(client, stamp, problem, accepted, status):
    response = client.post("/v1/classify_image", json={"images": [IMAGE]}, headers={"X-Request-Start": stamp})
    error = error_of(response, status)
    assert error["field"] == "X-Request-Start" and problem in error["problem"] and accepted in error["accepted"]


def test_a_strict_budget_no_variant_meets_even_idle_is_a_422(client):
    response = client.post("/v1/classify_image", json={"images": [IMAGE], "latency_budget_ms": 0.001, "strict": True})
    error = error_of(response, 422)
    assert error["field"] == "latency_budget_ms" and "even idle" in error["problem"] and "strict" in error["accepted"]


def test_a_strict_budget_the_load_prevents_is_a_503_with_retry_after(client):
    from serving import routes

    policy = routes.app.state.gateway.generation.policies["cnn"]
    fastest = min(row["profiled_p95_ms"] for row in policy.snapshot())
    held = [policy.route(60_000.0, variant=name) for name in policy.variant_names for _ in range(200)]
    try:  # 200 requests queued on every variant: a budget any of them meets idle is out of reach now
        body = {"images": [IMAGE], "latency_budget_ms": fastest * 4 + 2, "strict": True}
        response = client.post("/v1/classify_image", json=body)
    finally:
        for decision in held:
            policy.finish(decision, None)
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1 and "strict" in response.json()["error"]["message"]


def test_oversized_bodies_are_refused_before_parsing(client):
    big = json.dumps({"images": [[[255.0] * 28] * 28] * 64})  # ~330 KB with spaces; the limit here is 400 KB
    assert (
        client.post("/v1/classify_image", content=big * 2, headers={"Content-Type": "application/json"}).status_code
        == 413
    )


def test_an_oversized_body_without_a_length_is_a_413_on_every_route(client):
    chunks = [b'{"inputs": [' + b" " * 300_000, b" " * 200_000 + b"]}"]  # streamed: no Content-Length
    for path in ("/v2/models/cnn/infer", "/v1/predict/cnn", "/v1/classify_image"):
        response = client.post(path, content=iter(chunks), headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and response.json()["error"]["field"] == "body", (path, response.text)


def test_the_server_keeps_serving_after_errors(client):
    for _ in range(3):
        client.post("/v1/classify_image", json={"images": "bad"})
    assert client.post("/v1/classify_image", json={"images": [IMAGE]}).status_code == 200
    variants = client.get("/v1/variants").json()
    assert variants["executor_in_flight"] == 0


# -- start-up: the repository must be there, verified, and stay the one loaded -----------------
def test_a_missing_repository_stops_start_up_with_a_hint(tmp_path):
    with pytest.raises(RepositoryError, match="flexserve train"):
        Gateway(GatewayConfig(repo=tmp_path / "nowhere"))


def test_a_tampered_model_file_is_refused(profiled_repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(profiled_repo, copy, symlinks=True)
    onnx_file = live_dir(copy) / "cnn_distilled_fp32" / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="sha256"):
        Gateway(GatewayConfig(repo=copy))


def _without(repo, family: str, variant: str) -> None:
    """A new live version of `repo`: the same, less one variant."""
    with new_version(repo) as stage:
        manifest = read_manifest(stage)
        section = manifest.families[family]
        kept = tuple(v for v in section.variants if v.name != variant)
        write_manifest(stage, manifest.with_family(family, dataclasses.replace(section, variants=kept)))


def test_a_new_repository_version_is_served_without_a_restart(profiled_repo, tmp_path):
    import asyncio

    from serving.gateway import RequestContext

    copy = tmp_path / "repo"
    shutil.copytree(profiled_repo, copy, symlinks=True)
    gateway = Gateway(GatewayConfig(repo=copy, parallelism=1, watch_s=0))
    try:
        old, before = gateway.generation, gateway.version
        pinned = RequestContext(variant="cnn_distilled_fp16", latency_budget_ms=5000)
        assert asyncio.run(gateway.infer("cnn", {"images": [IMAGE]}, pinned))[0]["version"] == before
        _without(copy, "cnn", "cnn_distilled_fp16")
        assert gateway.ready() and gateway.version == before  # nothing changes until it reloads
        swap = gateway.reload()
        assert swap["reloaded"] and swap["previous"] == before and gateway.version == swap["version"] != before
        assert old.closed  # nothing was in flight: the old version's sessions are gone at once
        assert "cnn_distilled_fp16" not in gateway.policies["cnn"].variant_names
        with pytest.raises(InvalidRequestError, match="cnn_distilled_fp16"):
            asyncio.run(gateway.infer("cnn", {"images": [IMAGE]}, pinned))
        assert gateway.reload() == {"version": gateway.version, "reloaded": False}
    finally:
        gateway.close()


def test_a_retired_version_closes_with_its_last_request_and_takes_no_new_one(profiled_repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(profiled_repo, copy, symlinks=True)
    gateway = Gateway(GatewayConfig(repo=copy, parallelism=1, watch_s=0))
    try:
        old = gateway._enter()  # a request in flight on the live version
        _without(copy, "cnn", "cnn_distilled_fp16")
        gateway.reload()
        assert not old.closed and old.backend.healthy()  # retired, still open for its request
        assert old.enter() is False  # no new request enters it ...
        assert gateway._enter() is gateway.generation is not old  # ... they go to the new one
        gateway.generation.exit()
        old.exit()
        assert old.closed
    finally:
        gateway.close()


def test_a_broken_new_version_is_refused_and_the_old_one_keeps_serving(profiled_repo, tmp_path):
    from starlette.testclient import TestClient

    from serving import routes

    copy = tmp_path / "repo"
    shutil.copytree(profiled_repo, copy, symlinks=True)
    gateway = Gateway(GatewayConfig(repo=copy, parallelism=1, watch_s=0))
    served, routes.app.state.gateway = routes.app.state.gateway, gateway  # the module's app, for this test
    try:
        before = gateway.version
        with new_version(copy) as stage:
            onnx_file = stage / "cnn_distilled_fp32" / "1" / "model.onnx"
            data = onnx_file.read_bytes()
            onnx_file.unlink()  # a writer replaces a file, never writes into it (it may be a shared link)
            onnx_file.write_bytes(data + b"\0")
        response = TestClient(routes.app, client=("127.0.0.1", 50001)).post("/v1/admin/reload")
        assert response.status_code == 409 and "sha256" in response.json()["error"]["message"]
        assert f"still serving {before}" in response.json()["error"]["message"]
        assert gateway.version == before and gateway.ready()
        _without(copy, "cnn", "cnn_distilled_fp32")  # the next version drops the broken file: it loads
        assert gateway.reload()["reloaded"] and "cnn_distilled_fp32" not in gateway.policies["cnn"].variant_names
    finally:
        routes.app.state.gateway = served
        gateway.close()


def test_a_closed_gateway_refuses_with_a_503_error(profiled_repo):
    import asyncio

    from serving.errors import OverloadError
    from serving.gateway import RequestContext

    gateway = Gateway(GatewayConfig(repo=profiled_repo, parallelism=1, watch_s=0))
    gateway.close()
    with pytest.raises(OverloadError, match="shutting down"):
        asyncio.run(gateway.infer("cnn", {"images": [IMAGE]}, RequestContext()))


def test_reload_over_http_is_for_loopback_clients_only(client):
    from starlette.testclient import TestClient

    remote = TestClient(client.app, client=("203.0.113.7", 40000))  # the same running app, another address
    refused = remote.post("/v1/admin/reload")
    assert refused.status_code == 403 and "loopback only, not from 203.0.113.7" in refused.text
    version = client.get("/v1/variants").json()["version"]
    assert client.post("/v1/admin/reload").json() == {"version": version, "reloaded": False}  # already live


def test_the_watcher_picks_up_a_new_version_by_itself(profiled_repo, tmp_path):
    import time

    copy = tmp_path / "repo"
    shutil.copytree(profiled_repo, copy, symlinks=True)
    gateway = Gateway(GatewayConfig(repo=copy, parallelism=1, watch_s=0.05))
    try:
        before = gateway.version
        _without(copy, "rnn", "rnn_full_fp16")
        deadline = time.monotonic() + 30
        while gateway.version == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gateway.version != before and "rnn_full_fp16" not in gateway.policies["rnn"].variant_names
    finally:
        gateway.close()


def test_config_from_the_environment():
    config = GatewayConfig.from_env(
        {"FLEXSERVE_REPO": "/r", "FLEXSERVE_WORKERS": "3", "FLEXSERVE_DEFAULT_BUDGET_MS": "50"}
    )
    assert str(config.repo) == "/r" and config.workers == 3 and config.default_budget_ms == 50
    with pytest.raises(ValueError, match="FLEXSERVE_WORKERS"):
        GatewayConfig.from_env({"FLEXSERVE_WORKERS": "many"})


def test_workers_times_model_threads_never_exceed_the_cores(monkeypatch):
    from serving import gateway

    monkeypatch.setattr(gateway, "usable_cores", lambda: 8)
    assert (GatewayConfig().workers, GatewayConfig().parallelism) == (8, 1)  # one process per core
    assert GatewayConfig(workers=2).parallelism == 4 and GatewayConfig(workers=3).parallelism == 2
    assert GatewayConfig(workers=16).parallelism == 1  # never below one
    assert GatewayConfig(workers=2, parallelism=3).parallelism == 3  # asked for: as asked
    triton = GatewayConfig(backend="triton")  # Triton runs the models on these cores: one gateway process
    assert (triton.workers, triton.parallelism) == (1, 8)
    from_env = GatewayConfig.from_env({"FLEXSERVE_WORKERS": "4", "FLEXSERVE_PARALLELISM": "1"}, worker=4)
    assert (from_env.workers, from_env.parallelism, from_env.worker) == (4, 1, 4)
    with pytest.raises(ValueError, match=r"worker must be in \[1, 2\], got 3"):
        GatewayConfig(workers=2, worker=3)
    with pytest.raises(ValueError, match="parallelism must be >= 1"):
        GatewayConfig(parallelism=0)


def test_a_bentoml_model_store_tag_serves_the_profiled_repository(profiled_repo, tmp_path):
    from loadtest.profile import ProfileSettings, profile

    copy = tmp_path / "repo"
    shutil.copytree(profiled_repo, copy, symlinks=True)
    profile(copy, ProfileSettings(warmup_runs=1, min_runs=3, seconds_per_point=0.0), families=["rnn"], register=True)
    gateway = Gateway(GatewayConfig(model_tag="flexserve-model-repository:latest", parallelism=1))
    try:
        assert gateway.ready() and gateway.repo.root != copy  # the store's own copy
        assert gateway.repo.family("rnn").variants[0].latency_ms
    finally:
        gateway.close()
    with pytest.raises(RepositoryError, match="flexserve train"):
        Gateway(GatewayConfig(model_tag="no-such-model:latest"))


def test_a_family_the_repository_lacks_is_a_404(profiled_repo, tmp_path):
    import asyncio

    from serving.gateway import RequestContext, UnknownFamilyError

    copy = tmp_path / "repo"
    shutil.copytree(profiled_repo, copy, symlinks=True)
    manifest = json.loads((live_dir(copy) / "manifest.json").read_text())
    del manifest["families"]["rnn"]
    (live_dir(copy) / "manifest.json").write_text(json.dumps(manifest))
    gateway = Gateway(GatewayConfig(repo=copy, parallelism=1))
    try:
        with pytest.raises(UnknownFamilyError) as error:
            asyncio.run(gateway.infer("rnn", {"texts": ["fine"]}, RequestContext()))
        assert error.value.field == "family" and "flexserve train --family rnn" in error.value.accepted
    finally:
        gateway.close()


def test_a_strict_request_gives_the_backend_the_time_left_of_its_budget(profiled_repo):
    """For Triton's per-request `timeout`: the time left of a strict request's budget reaches the
    backend; a best-effort request carries none. A backend that drops it for time (Triton's
    `TritonTimeoutError`, an overload) refuses the request: nothing is benched, nothing rerouted."""
    import asyncio

    from serving.backends.triton import TritonTimeoutError
    from serving.errors import OverloadError
    from serving.gateway import RequestContext

    gateway = Gateway(GatewayConfig(repo=profiled_repo, parallelism=1, watch_s=0))
    backend = gateway.generation.backend
    real, seen, drop = backend.run, [], []

    def run(variant, feeds, timeout_ms=None):
        seen.append(timeout_ms)
        if drop:
            raise TritonTimeoutError("Request timeout expired", retry_after_s=0.1)
        return real(variant, feeds)

    backend.run = run
    try:
        asyncio.run(gateway.infer("cnn", {"images": [IMAGE]}, RequestContext(5_000.0, strict=True, elapsed_ms=1_000)))
        asyncio.run(gateway.infer("cnn", {"images": [IMAGE]}, RequestContext(5_000.0)))
        assert 3_900 < seen[0] <= 4_000 and seen[1] is None  # 5 s less the 1 s before the server
        drop.append(True)
        with pytest.raises(OverloadError):
            asyncio.run(gateway.infer("cnn", {"images": [IMAGE]}, RequestContext(5_000.0, strict=True)))
        assert len(seen) == 3  # not routed again
        assert all(v["benched_s"] == 0 for v in gateway.variants()["families"]["cnn"]["variants"])
    finally:
        gateway.close()


def test_the_app_bentoml_builds_times_requests_out_with_flexserves_middleware_in_bentomls_place(client):
    """BentoML puts its `TimeoutMiddleware` in every worker's app for `traffic={"timeout": ...}`; the
    gateway's app must carry FlexServe's instead (its timer does not outlive the request), once."""
    from serving.middleware import RequestTimeout

    names = [m.cls.__name__ for m in client.app.user_middleware]
    assert names.count("RequestTimeout") == 1 and "TimeoutMiddleware" not in names
    timeout = next(m for m in client.app.user_middleware if m.cls is RequestTimeout)
    assert timeout.kwargs["timeout"] == 30
