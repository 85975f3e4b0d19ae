"""The recommender's adapter (`recsys`): a user (and optional candidate movies) in, the top-k movies
by predicted rating out. A typical request scores the whole catalogue: 1,682 model rows. The tensor
API also takes `USER_ID` (INT64 [1]) and `ITEM_IDS` (INT64 [m], MovieLens ids; default: all).

A user the catalogue does not know sends `ratings` instead of `user_id` (the tensor API:
`RATED_ITEM_IDS` INT64 [n] and `RATINGS` FP32 [n]): the variant rates the movies for the prior user
its repository carries, and `finish` fits the new user to their ratings on top, in numpy
(`contract/coldstart.py`), with the routed variant's kind's cold-start state. On the tensor API the
RATING answer rates the ITEM_IDS sent, in their order, or else every movie not rated, in catalogue
order (GET /v2/models/recsys lists the catalogue's ids in that order nowhere: send ITEM_IDS to know
which is which)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from contract.coldstart import ColdStart
from contract.triton_config import TensorConfig
from serving.errors import InvalidRequestError, UnprocessableRequestError
from serving.families.base import Decoded, Family
from serving.preprocess import Catalog, required

DEFAULT_K = 10


class RecommenderFamily(Family):
    adapter = "recommender"
    fields = {
        "user_id": "a MovieLens user id (or, for a user it does not know, `ratings`)",
        "ratings": 'a new user\'s ratings, [{"item_id": 50, "rating": 5}, ...], instead of user_id',
        "k": f"how many movies to answer, 1-100 (default {DEFAULT_K})",
        "candidate_item_ids": "the movies to rank (default: the whole catalogue; with ratings, the movies not rated)",
    }
    raw_inputs = (
        TensorConfig("USER_ID", "int64", (1,), optional=True),
        TensorConfig("ITEM_IDS", "int64", (-1,), optional=True),
        TensorConfig("RATED_ITEM_IDS", "int64", (-1,), optional=True),
        TensorConfig("RATINGS", "float32", (-1,), optional=True),
    )
    tensor_fields = {"user_id": "USER_ID", "candidate_item_ids": "ITEM_IDS"}

    def __init__(self, name, section, artifact=None):
        super().__init__(name, section, artifact)
        self.catalog = Catalog.from_manifest(section, artifact("catalog"))
        self.cold_start: dict[str, ColdStart] = {}  # by variant
        self.no_cold_start = (
            "this model repository has no cold-start state (it was built before cold start, or imported)"
        )
        if "cold_start" in section.preprocessing:
            state = artifact("cold_start")
            self.prior_row = np.asarray(state["prior_row"], dtype=np.int64)
            try:
                kinds = {kind: ColdStart.from_json(entry) for kind, entry in state["kinds"].items()}
            except ValueError as error:  # an earlier build's state: known users are still served
                self.no_cold_start = str(error)
            else:
                self.cold_start = {v.name: kinds[v.kind] for v in section.variants if v.kind in kinds}

    def decode(self, body: Mapping) -> Decoded:
        k = DEFAULT_K if body.get("k") is None else body.get("k")
        if body.get("ratings") is not None:
            if body.get("user_id") is not None:
                raise InvalidRequestError("ratings", "is sent with user_id", "one of user_id (a known user) or ratings")
            feeds, state = self.catalog.cold_start(
                self._prior_row(), body["ratings"], k, body.get("candidate_item_ids")
            )
            return Decoded(feeds, len(next(iter(feeds.values()))), state)
        user_id = required(body.get("user_id"), "user_id", "a MovieLens user id, or ratings for a new user")
        feeds, candidates, k = self.catalog.encode(user_id, k, body.get("candidate_item_ids"))
        return Decoded(feeds, len(candidates), {"candidates": candidates, "k": k})

    def _prior_row(self) -> np.ndarray:
        if not self.cold_start:
            raise UnprocessableRequestError(
                "ratings", self.no_cold_start, "user_id; or rebuild the recommender: `flexserve train --family recsys`"
            )
        return self.prior_row

    def finish(self, outputs: list[np.ndarray], decoded: Decoded, variant: str) -> list[np.ndarray]:
        fit = decoded.state.get("cold_start")
        if fit is None:
            return outputs
        state = self.cold_start.get(variant)
        if state is None:
            raise UnprocessableRequestError(
                "ratings", f"{variant} has no cold-start state", "another variant, or user_id; or rebuild recsys"
            )
        prior = outputs[0].reshape(-1)[fit["where"]]  # the support's, then the candidates'
        fitted = state.predict(prior, fit["support"], fit["ratings"], fit["targets"])
        return [fitted.reshape(-1, *outputs[0].shape[1:]), *outputs[1:]]  # as the variant shaped it

    def encode(self, outputs: Sequence[np.ndarray], decoded: Decoded) -> dict:
        answer = {"items": self.catalog.decode(outputs[0], decoded.state["candidates"], decoded.state["k"])}
        if "cold_start" in decoded.state:
            answer["cold_start"] = {"fitted_from_ratings": len(decoded.state["cold_start"]["ratings"])}
        return answer

    def example_body(self, rng: np.random.Generator) -> dict:
        return {"user_id": int(next(iter(self.catalog.user_row))), "k": DEFAULT_K}

    def example_tensors(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"USER_ID": np.array([self.example_body(rng)["user_id"]], dtype=np.int64)}  # the whole catalogue

    def decode_tensors(self, named: Mapping[str, np.ndarray]) -> Decoded:
        if "RATED_ITEM_IDS" in named or "RATINGS" in named:
            return self._cold_start_tensors(named)
        if "USER_ID" not in named:
            return super().decode_tensors(named)
        users = self.raw(named, "USER_ID").reshape(-1)
        if users.size != 1:
            raise InvalidRequestError("USER_ID", f"{users.size} values", "exactly one INT64 user id")
        items = self.raw(named, "ITEM_IDS")
        try:
            feeds, candidates = self.catalog.score(
                int(users[0]), None if items is None else [int(i) for i in items.reshape(-1)]
            )
        except InvalidRequestError as error:
            raise self._renamed(error) from None
        return Decoded(feeds, len(candidates))

    def _cold_start_tensors(self, named: Mapping[str, np.ndarray]) -> Decoded:
        accepted = "RATED_ITEM_IDS (INT64 [n]) and RATINGS (FP32 [n]) together, instead of USER_ID"
        if "USER_ID" in named:
            raise InvalidRequestError("RATED_ITEM_IDS", "is sent with USER_ID", accepted)
        items, values = self.raw(named, "RATED_ITEM_IDS"), self.raw(named, "RATINGS")
        if items is None or values is None:
            raise InvalidRequestError("RATINGS" if values is None else "RATED_ITEM_IDS", "is missing", accepted)
        items, values = items.reshape(-1), values.reshape(-1)
        if items.size != values.size:
            raise InvalidRequestError("RATINGS", f"{values.size} values for {items.size} RATED_ITEM_IDS", accepted)
        candidates = self.raw(named, "ITEM_IDS")
        body = {
            "ratings": [{"item_id": int(i), "rating": float(r)} for i, r in zip(items, values, strict=True)],
            "k": 1,
            "candidate_item_ids": None if candidates is None else [int(i) for i in candidates.reshape(-1)],
        }
        try:
            decoded = self.decode(body)
        except InvalidRequestError as error:
            raise self._renamed(error) from None
        return Decoded(decoded.feeds, decoded.rows, decoded.state)

    def _renamed(self, error: InvalidRequestError) -> InvalidRequestError:
        """Cold start's fields by the tensors that carry them: ratings[3].rating -> RATINGS[3]."""
        if error.field.startswith("ratings"):
            index = error.field[len("ratings") :].split(".")[0]
            tensor = "RATINGS" if error.field.endswith(".rating") else "RATED_ITEM_IDS"
            return type(error)(tensor + index, error.problem, error.accepted)
        return super()._renamed(error)

    def typical_feeds(self, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # A typical request scores the whole catalogue for one user; smaller batches, part of it.
        items = len(self.catalog.items)
        users = rng.integers(0, len(self.catalog.user_features), -(-rows // items))
        return self.catalog.pairs(np.repeat(users, items)[:rows], np.tile(np.arange(items), len(users))[:rows])
