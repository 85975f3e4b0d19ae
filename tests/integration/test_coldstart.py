"""Cold start end to end in one process: meta-training steps on synthetic ratings, the build's
cold-start state in the repository, and the gateway fitting a new user inside a request, on both its
doors (/v1/recommend and the v2 tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serving.repository import load_repository
from training import coldstart
from training.data import synthetic_ratings
from training.tasks import get_task
from training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def trained():
    data = synthetic_ratings(num_users=200, num_items=60, n=6000, seed=0)
    task = get_task("recsys")
    torch.manual_seed(0)
    # the full model, lightly regularised: on these ratings it learns the tastes the fit then finds
    settings = TrainConfig(**{**task.train_settings("full", quick=False), "epochs": 8, "weight_decay": 0.01}, seed=0)
    return data, train(task.build("full", data), task, data.train, data.val, settings, "recsys").model


def test_meta_training_moves_the_prior_and_lowers_the_query_loss(trained):
    data, model = trained
    ordinary = coldstart.ordinary_prior(model, data)
    learned, losses = coldstart.meta_train(model, data, ordinary, coldstart.MetaSettings(steps=80, lr=0.05, seed=0))
    assert len(losses) == 80 and np.isfinite(losses).all()
    assert not torch.equal(learned.mean, ordinary.mean) and not torch.equal(learned.log_penalty, ordinary.log_penalty)
    assert not torch.equal(learned.log_shrinkage, ordinary.log_shrinkage)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    # the network itself is left as trained: the variants served are the ones measured
    assert all(not p.requires_grad for p in model.parameters())


def test_the_evaluation_compares_the_three_on_the_held_out_users(trained):
    data, model = trained
    ordinary = coldstart.ordinary_prior(model, data)
    table = coldstart.evaluate(model, data, {"ordinary": ordinary})
    assert sorted(table, key=int) == ["1", "3", "5", "10"]
    for row in table.values():
        assert row["users"] == 20 and row["query_ratings"] > 0
        assert 0 < row["item_mean"]["rmse"] < 4 and 0 < row["ordinary"]["rmse"] < 4 and row["ordinary"]["se"] > 0
    # taste is per genre: ten ratings tell the fit more than one does, and five more than the item means
    assert table["10"]["ordinary"]["rmse"] < table["1"]["ordinary"]["rmse"] - 0.1
    assert table["5"]["ordinary"]["rmse"] < table["5"]["item_mean"]["rmse"] - 0.1


# -- the build's state, and the gateway --------------------------------------------------------------
def test_the_build_writes_cold_start_state_for_each_kind(profiled_repo):
    repo = load_repository(profiled_repo)
    section = repo.family("recsys")
    state = repo.artifact("recsys", "cold_start")  # checked against its sha256
    assert set(state["kinds"]) == {"full", "distilled"}
    items = len(repo.artifact("recsys", "catalog")["items"])
    for kind, entry in state["kinds"].items():
        assert np.asarray(entry["jacobian"]).shape[0] == items
        assert len(entry["penalty"]) == np.asarray(entry["jacobian"]).shape[1]
        assert len(entry["item_means"]) == items and entry["shrinkage"] > 0
        table = section.training["cold_start"]["kinds"][kind]["query_rmse"]
        assert set(table["5"]) >= {"item_mean", "ordinary", "meta_learned"}
    catalogue_users = len(repo.artifact("recsys", "catalog")["users"])
    assert state["prior_row"][0] == catalogue_users  # one row past the catalogue's users


RATED = [{"item_id": 1, "rating": 5}, {"item_id": 6, "rating": 4}, {"item_id": 3, "rating": 1}]


@pytest.fixture(scope="module")
def client(profiled_repo, gateway_client):
    with gateway_client(profiled_repo) as test_client:
        yield test_client


def test_the_gateway_fits_a_new_user_inside_a_recommend_request(client, profiled_repo):
    response = client.post("/v1/recommend", json={"ratings": RATED, "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cold_start"] == {"fitted_from_ratings": 3}
    assert len(body["items"]) == 5 and not {i["item_id"] for i in body["items"]} & {1, 6, 3}  # not rated ones
    scores = [i["predicted_rating"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(1 <= s <= 5 for s in scores)
    user = load_repository(profiled_repo).artifact("recsys", "catalog")["users"][0]["user_id"]
    known = client.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
    assert "cold_start" not in known or known["cold_start"] is None


def rated_itself(client, rating: float, variant: str) -> float:
    body = {"ratings": [{"item_id": 2, "rating": rating}], "candidate_item_ids": [2], "k": 1, "variant": variant}
    response = client.post("/v1/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()["items"][0]["predicted_rating"]


@pytest.mark.parametrize("variant", ["recsys_full_fp32", "recsys_distilled_int8"])
def test_the_fit_follows_the_ratings(client, variant):
    """The same movie, rated 5 or 1 by a new user: the fit pulls its predicted rating after it."""
    assert rated_itself(client, 5, variant) > rated_itself(client, 1, variant)


def test_the_tensor_door_fits_the_same_user(client):
    friendly = client.post(
        "/v1/recommend",
        json={"ratings": RATED, "candidate_item_ids": [2, 4, 9], "k": 3, "variant": "recsys_full_fp32"},
    ).json()
    tensors = client.post(
        "/v2/models/recsys/infer",
        json={
            "inputs": [
                {"name": "RATED_ITEM_IDS", "datatype": "INT64", "shape": [3], "data": [r["item_id"] for r in RATED]},
                {"name": "RATINGS", "datatype": "FP32", "shape": [3], "data": [r["rating"] for r in RATED]},
                {"name": "ITEM_IDS", "datatype": "INT64", "shape": [3], "data": [2, 4, 9]},
            ],
            "parameters": {"variant": "recsys_full_fp32"},
        },
    )
    assert tensors.status_code == 200, tensors.text
    ratings = dict(zip([2, 4, 9], np.asarray(tensors.json()["outputs"][0]["data"]).reshape(-1), strict=True))
    for item in friendly["items"]:
        assert ratings[item["item_id"]] == pytest.approx(item["predicted_rating"], abs=1e-4)


@pytest.mark.parametrize(
    "path, body, field, status",
    [
        ("/v1/recommend", {"ratings": [{"item_id": 1, "rating": 6}]}, "ratings[0].rating", 400),
        ("/v1/recommend", {"ratings": [{"item_id": 1, "rating": 3}] * 2}, "ratings[1].item_id", 422),
        ("/v1/recommend", {"ratings": [{"item_id": 1, "rating": 3}] * 101}, "ratings", 400),
        ("/v1/recommend", {"ratings": [{"item_id": 10**6, "rating": 3}]}, "ratings[0].item_id", 422),
        ("/v1/recommend", {"ratings": [{"item_id": 1, "rating": 3}], "user_id": 1}, "ratings", 422),
        (
            "/v2/models/recsys/infer",
            {
                "inputs": [
                    {"name": "RATED_ITEM_IDS", "datatype": "INT64", "shape": [2], "data": [1, 2]},
                    {"name": "RATINGS", "datatype": "FP32", "shape": [2], "data": [3, 9]},
                ]
            },
            "RATINGS[1]",
            422,
        ),
        (
            "/v2/models/recsys/infer",
            {"inputs": [{"name": "RATED_ITEM_IDS", "datatype": "INT64", "shape": [1], "data": [1]}]},
            "RATINGS",
            422,
        ),
    ],
)
def test_bad_ratings_are_refused_by_name_and_the_gateway_keeps_serving(client, path, body, field, status):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert client.post("/v1/recommend", json={"ratings": RATED, "k": 2}).status_code == 200


def test_a_state_from_an_earlier_build_still_serves_known_users_and_refuses_ratings_by_name(profiled_repo):
    from serving.errors import UnprocessableRequestError
    from serving.families import family_adapter

    repo = load_repository(profiled_repo)
    state = repo.artifact("recsys", "cold_start")
    earlier = {
        **state,
        "kinds": {k: {"jacobian": e["jacobian"], "penalty": e["penalty"]} for k, e in state["kinds"].items()},
    }
    adapter = family_adapter(
        "recsys", repo.family("recsys"), lambda name: earlier if name == "cold_start" else repo.artifact("recsys", name)
    )
    user = repo.artifact("recsys", "catalog")["users"][0]["user_id"]
    assert adapter.decode({"user_id": user, "k": 3}).rows > 0
    with pytest.raises(UnprocessableRequestError, match="no item_means, shrinkage") as refused:
        adapter.decode({"ratings": RATED})
    assert refused.value.field == "ratings" and "flexserve train --family recsys" in str(refused.value.accepted)
