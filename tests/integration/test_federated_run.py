"""Federated training in Flower's simulation engine (real Flower, real Ray): a run of 2 rounds x 3
clients on synthetic ratings, and its variants added to a repository and served by the gateway."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from contract.manifest import read_manifest
from training.federated import LOCAL, RESULT_SUMMARY, FederatedSettings, load_result, shared_state, simulate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("federated")
    rounds: list[dict] = []
    settings = FederatedSettings(clients=3, rounds=2, fraction=1.0, synthetic=True, local_epochs=1, out=str(out))
    return simulate(settings, rounds.append), rounds, out


def test_two_rounds_of_three_clients_report_every_round(run):
    result, rounds, _ = run
    assert [r["round"] for r in rounds] == [1, 2] and all(r["clients"] == 3 for r in rounds)
    assert all(0 < r["val_rmse"] < 4 and r["val_ratings"] > 0 for r in rounds)
    # each round: the shared weights down to the 3 training clients and back from each, and down to the
    # 3 validating ones (float32, plus Flower's few bytes of names and shapes per array)
    from training.federated import build_model, dataset

    shared_bytes = sum(v.numel() * 4 for v in shared_state(build_model(dataset(0, True), 0)).values())
    assert all(3 * 3 * shared_bytes <= r["bytes_sent"] <= 1.01 * 3 * 3 * shared_bytes for r in rounds)
    final = result["summary"]["final"]
    assert final["test"]["ratings"] > 0 and 0 < final["test"]["rmse"] < 4


def test_the_server_never_holds_a_user_row_and_writes_what_it_has(run):
    result, _, out = run
    assert not set(result["state"]) & set(LOCAL)
    summary, state = load_result(out)
    assert summary["history"] == json.loads((out / RESULT_SUMMARY).read_text())["history"]
    assert set(state) == set(result["state"]) and all(np.array_equal(state[k], result["state"][k]) for k in state)


@pytest.fixture(scope="module")
def federated_repo(profiled_repo, tmp_path_factory):
    """A copy of the profiled synthetic repository with federated variants added, and profiled."""
    from loadtest.profile import ProfileSettings, profile
    from training.federated import build
    from training.pipeline import BuildConfig

    out = tmp_path_factory.mktemp("fed-repo") / "model_repository"
    shutil.copytree(profiled_repo, out, symlinks=True)
    config = BuildConfig(out=out, quick=True, synthetic=True, register=False)
    build(config, FederatedSettings(clients=3, rounds=2, fraction=1.0, local_epochs=1))
    profile(out, ProfileSettings(warmup_runs=2, min_runs=10, seconds_per_point=0.01), missing_only=True)
    return out


def test_federated_variants_join_the_family_marked_and_measured(federated_repo):
    section = read_manifest(federated_repo).families["recsys"]
    federated = [v for v in section.variants if v.training == "federated"]
    assert sorted(v.name for v in federated) == [f"recsys_federated_{p}" for p in ("fp16", "fp32", "int8")]
    assert {v.kind for v in section.variants} == {"full", "distilled", "federated"}
    assert all(v.metrics["rmse"] > 0 and v.latency_ms for v in federated)
    run = section.training["federated"]
    assert len(run["history"]) == 2 and run["centralized_test_rmse"] > 0 and run["final"]["test"]["rmse"] > 0
    assert section.training["cold_start"]["kinds"]["federated"]["item_means_from"] == "meta_training_users"
    # its cold-start fit's item means: the meta-training users' ratings, never the clients'
    from training.coldstart import item_means
    from training.federated import dataset

    data = dataset(0, True, quick=True)
    kinds = json.loads((federated_repo / "current" / section.preprocessing["cold_start"].path).read_text())["kinds"]
    np.testing.assert_allclose(
        kinds["federated"]["item_means"], item_means(data, "meta_training_users", shrunk=True), atol=1e-5
    )
    np.testing.assert_allclose(kinds["full"]["item_means"], item_means(data, shrunk=True), atol=1e-5)


def test_the_gateway_serves_the_federated_variants(federated_repo, gateway_client):
    with gateway_client(federated_repo) as client:
        rated = {"ratings": [{"item_id": 1, "rating": 5}, {"item_id": 2, "rating": 2}], "k": 3}
        answer = client.post("/v1/recommend", json=rated | {"variant": "recsys_federated_int8"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["variant"] == "recsys_federated_int8" and answer.json()["cold_start"]
        user = read_manifest(federated_repo).families["recsys"]
        catalog = json.loads((federated_repo / "current" / user.preprocessing["catalog"].path).read_text())
        known = client.post(
            "/v1/recommend", json={"user_id": catalog["users"][0]["user_id"], "variant": "recsys_federated_fp32"}
        )
        assert known.status_code == 200, known.text
        variants = client.get("/v1/variants").json()
        assert any(v["name"] == "recsys_federated_fp16" for v in variants["families"]["recsys"]["variants"])
