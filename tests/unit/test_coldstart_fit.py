"""The cold-start fit (contract/coldstart.py) on problems small enough to solve by hand, its torch twin
(training/coldstart.py), the linearisation it rests on, and the catalogue's checks of a new user's
ratings (serving/preprocess.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.coldstart import MAX_RATINGS, ColdStart, averaged, fit_offset, shrunk_offset
from models.recsys import RatingPredictor, RecsysConfig
from serving.errors import InvalidRequestError, UnprocessableRequestError
from serving.preprocess import Catalog
from training.coldstart import Prior, linearised, means_without, ridge, shrinkage_of
from training.data import held_out_users, synthetic_ratings


def test_the_fit_recovers_a_known_offset_when_the_penalty_is_tiny():
    design = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    truth = np.array([0.5, -0.25])
    offset = fit_offset(design, design @ truth, np.full(2, 1e-9))
    np.testing.assert_allclose(offset, truth, atol=1e-6)


def test_the_fit_is_ridge_regression_with_a_per_dimension_penalty():
    rng = np.random.default_rng(0)
    design, residual, penalty = rng.normal(size=(3, 5)), rng.normal(size=3), np.array([0.5, 1, 2, 4, 8])
    # (J'J + diag(penalty))^-1 J' r: the D x D form; the fit solves the k x k one
    expected = np.linalg.solve(design.T @ design + np.diag(penalty), design.T @ residual)
    np.testing.assert_allclose(fit_offset(design, residual, penalty), expected, atol=1e-10)
    # one rating, one dimension: r * j / (j^2 + penalty)
    np.testing.assert_allclose(fit_offset(np.array([[2.0]]), np.array([1.0]), np.array([4.0])), [2 / 8])


def test_a_large_penalty_keeps_the_prior():
    offset = fit_offset(np.array([[1.0, 1.0]]), np.array([3.0]), np.full(2, 1e9))
    assert np.abs(offset).max() < 1e-8


def test_the_torch_twin_matches_the_served_fit():
    rng = np.random.default_rng(1)
    design, residual, penalty = rng.normal(size=(4, 6)), rng.normal(size=4), rng.uniform(0.1, 3, 6)
    served = fit_offset(design, residual, penalty)
    twin = ridge(*(torch.as_tensor(a) for a in (design, residual, penalty)))
    np.testing.assert_allclose(twin.numpy(), served, atol=1e-10)


def state(item_means=(3.0, 3.0, 3.0), shrinkage=1e9) -> ColdStart:
    return ColdStart(
        jacobian=np.array([[1.0], [1.0], [-1.0]], np.float32),
        penalty=np.array([1e-6], np.float32),
        item_means=np.array(item_means, np.float32),
        shrinkage=shrinkage,
    )


def test_predict_averages_the_fit_with_the_item_means_then_rates_within_the_rating_range():
    # the prior rates the three movies 3; the user rates movie 0 a 4: the fit's offset is +1 on the
    # shared direction (4, 2); the item means (3, 3) with the offset all but shrunk away: half-way
    prior = np.array([3.0, 3.0, 3.0], np.float32)
    fitted = state().predict(prior, np.array([0]), np.array([4.0]), np.array([1, 2]))
    np.testing.assert_allclose(fitted, [3.5, 2.5], atol=1e-4)
    # no shrinkage: the item means take the whole offset (+1): (4 + 4) / 2, (2 + 4) / 2
    fitted = state(shrinkage=0.0).predict(prior, np.array([0]), np.array([4.0]), np.array([1, 2]))
    np.testing.assert_allclose(fitted, [4.0, 3.0], atol=1e-4)
    far = state(shrinkage=0.0).predict(prior, np.array([0]), np.array([5.0]), np.array([1, 2]))
    far_fit = state((4.9, 4.9, 1.2)).predict(np.array([4.9, 4.9, 3.0], np.float32), [0], [5.0], [1, 2])
    assert far.max() <= 5.0 and far_fit.min() >= 1.0


def test_the_item_means_half_shrinks_the_users_mean_residual():
    # movies 0 and 1 rated 1 and 0.5 above their means, shrinkage 1.5: offset (1 + 0.5) / (2 + 1.5)
    served = state((3.0, 2.0, 4.0), shrinkage=1.5)
    assert shrunk_offset(np.array([1.0, 0.5]), 1.5) == pytest.approx(1.5 / 3.5)
    # movie 2: the fit's half as fit_offset finds it, the item means' half 4 + that offset
    fitted = served.predict(np.array([3.0, 2.0, 4.0], np.float32), np.array([0, 1]), np.array([4.0, 2.5]), [2])
    fit_half = 4.0 - fit_offset(served.jacobian[[0, 1]], np.array([1.0, 0.5]), served.penalty)[0]
    np.testing.assert_allclose(fitted, [(fit_half + 4.0 + 1.5 / 3.5) / 2], atol=1e-4)


def test_a_state_from_an_earlier_build_names_what_it_lacks_and_how_to_rebuild():
    entry = {"jacobian": [[1.0]], "penalty": [1.0]}
    with pytest.raises(ValueError, match=r"no item_means, shrinkage.*flexserve train --family recsys"):
        ColdStart.from_json(entry)
    again = ColdStart.from_json(state(shrinkage=2.0).to_json())
    assert again.shrinkage == 2.0 and again.item_means.tolist() == [3.0, 3.0, 3.0]


def test_the_design_is_the_ratings_gradient_then_a_one_for_the_offset():
    config = RecsysConfig(
        num_users=3, num_items=4, num_ages=2, num_genders=2, num_occupations=2, num_years=2, num_genres=3,
        title_vocab_size=5, embed_dim=8, tower_dim=8, head_hidden=(8,),
    )  # fmt: skip
    torch.manual_seed(0)
    model = RatingPredictor(config).eval()
    items = model.item_vectors(torch.arange(4)[:, None].repeat(1, 2) % 2, torch.rand(4, 3), torch.ones(4, 2).long())
    prior = Prior(torch.randn(model.user_input_dim) * 0.1, torch.zeros(model.user_input_dim + 1), torch.zeros(()))
    rows = torch.tensor([0, 2, 3])
    ratings, design = linearised(model, prior, items.detach(), rows)
    assert design.shape == (3, model.user_input_dim + 1) and torch.all(design[:, -1] == 1)
    step = torch.zeros(model.user_input_dim)
    step[5] = 1e-3
    with torch.no_grad():
        moved = model.rate((prior.mean + step).expand(3, -1), items[rows])
    np.testing.assert_allclose((moved - ratings).detach().numpy() / 1e-3, design[:, 5].numpy(), rtol=1e-2, atol=1e-4)


def test_the_prior_user_appended_to_the_model_is_rated_as_its_input():
    config = RecsysConfig(
        num_users=3, num_items=4, num_ages=2, num_genders=2, num_occupations=2, num_years=2, num_genres=3,
        title_vocab_size=5, embed_dim=8, tower_dim=8, head_hidden=(8,),
    )  # fmt: skip
    model = RatingPredictor(config).eval()
    prior = torch.randn(model.user_input_dim)
    row = model.add_user(prior)
    assert row == [3, 2, 2, 2]
    torch.testing.assert_close(model.user_input(torch.tensor([row]))[0], prior)


def test_held_out_users_are_neither_in_the_catalogue_nor_in_any_split():
    data = synthetic_ratings(seed=3)
    catalogue_users = {u["user_id"] for u in data.preprocessing["catalog"]["users"]}
    cold, meta = held_out_users([100 + u for u in range(40)], 3)
    assert len(cold) == len(meta) == 4 and not cold & meta and not (cold | meta) & catalogue_users
    assert len(catalogue_users) == 32
    assert data.preprocessing["cold_start_users"]["user"].max() == 3  # four users, grouped


# -- a new user's ratings, as the catalogue checks them ---------------------------------------------
CATALOG = Catalog(
    {
        "genres": ["Drama"],
        "users": [{"user_id": 7, "features": [0, 1, 0, 3]}],
        "items": [
            {"item_id": 10 + i, "title": f"Movie {i}", "features": [i, 2], "genres": ["Drama"], "title_tokens": [2]}
            for i in range(5)
        ],
    },
    (1.0, 5.0),
)


def field_of(call) -> tuple[str, type]:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    return caught.value.field, type(caught.value)


@pytest.mark.parametrize(
    "ratings, field, error",
    [
        ([], "ratings", InvalidRequestError),
        ([{"item_id": 10, "rating": 3}] * (MAX_RATINGS + 1), "ratings", InvalidRequestError),
        ("10:5", "ratings", InvalidRequestError),
        ([{"item_id": 10}], "ratings[0]", InvalidRequestError),
        ([{"item_id": 10, "rating": 3}, {"item_id": "11", "rating": 3}], "ratings[1].item_id", InvalidRequestError),
        ([{"item_id": 99, "rating": 3}], "ratings[0].item_id", UnprocessableRequestError),
        ([{"item_id": 10, "rating": 0.5}], "ratings[0].rating", InvalidRequestError),
        ([{"item_id": 10, "rating": True}], "ratings[0].rating", InvalidRequestError),
        ([{"item_id": 10, "rating": 3}, {"item_id": 10, "rating": 4}], "ratings[1].item_id", InvalidRequestError),
    ],
)
def test_bad_ratings_name_the_field(ratings, field, error):
    assert field_of(lambda: CATALOG.rated(ratings)) == (field, error)


def test_a_cold_start_request_rates_the_support_and_the_unrated_movies_as_the_prior_user():
    prior_row = np.array([2, 3, 2, 5])
    feeds, state = CATALOG.cold_start(prior_row, [{"item_id": 12, "rating": 5}, {"item_id": 10, "rating": 2}], 2, None)
    assert (feeds["USER_FEATURES"] == prior_row).all()
    assert state["candidates"].tolist() == [1, 3, 4]  # every movie not rated
    rows = feeds["ITEM_FEATURES"][:, 0]
    assert rows[state["cold_start"]["where"]].tolist() == [2, 0, 1, 3, 4]  # the support's, then the candidates'
    assert state["cold_start"]["ratings"].tolist() == [5.0, 2.0]
    assert field_of(lambda: CATALOG.cold_start(prior_row, [{"item_id": 10, "rating": 2}], 5, None)) == (
        "k",
        UnprocessableRequestError,
    )


def test_the_served_average_is_the_same_in_torch_as_in_numpy():
    fitted, means, residual = np.array([0.5, 3.2, 5.6]), np.array([3.0, 4.8, 0.7]), np.array([1.0, -0.5])
    served = averaged(fitted, means + shrunk_offset(residual, 2.0))
    twin = averaged(torch.as_tensor(fitted), torch.as_tensor(means) + shrunk_offset(torch.as_tensor(residual), 2.0))
    np.testing.assert_allclose(twin.numpy(), served)
    # each half held to 1-5 before the average: (1 + 3.125) / 2, (3.2 + 4.925) / 2, (5 + 1) / 2
    np.testing.assert_allclose(served, [2.0625, 4.0625, 3.0])


def test_the_empirical_bayes_shrinkage_is_the_noise_over_the_users_spread():
    rng = np.random.default_rng(0)
    # 4000 users, offsets of variance 0.25, 20 ratings each with noise of variance 1: shrinkage 4
    residuals = [rng.normal(offset, 1.0, 20) for offset in rng.normal(0, 0.5, 4000)]
    assert shrinkage_of(residuals) == pytest.approx(4.0, rel=0.1)


def test_a_users_own_ratings_can_be_left_out_of_the_item_means():
    totals = (np.array([8.0, 3.0, 0.0]), np.array([2, 1, 0]), 3.5, 0.0)  # sums, counts, overall mean, weight
    np.testing.assert_allclose(means_without(totals, np.array([0, 1, 2])), [4.0, 3.0, 3.5])
    # without the user's 5 of item 0 and 3 of item 1 (its only rating: the overall mean)
    np.testing.assert_allclose(means_without(totals, np.array([0, 1]), np.array([5.0, 3.0])), [3.0, 3.5])


def test_shrunk_item_means_start_from_the_overall_mean():
    # two ratings at 3.5 to begin with: item 0 (8 from 2) -> 15 / 4, item 1 (3 from 1) -> 10 / 3
    totals = (np.array([8.0, 3.0, 0.0]), np.array([2, 1, 0]), 3.5, 2.0)
    np.testing.assert_allclose(means_without(totals, np.array([0, 1, 2])), [15 / 4, 10 / 3, 3.5], rtol=1e-6)
    np.testing.assert_allclose(means_without(totals, np.array([1]), np.array([3.0])), [3.5])
