"""The recommender's adapter (`recsys`): a user (and optional candidate movies) in, the top-k movies
by predicted rating out. A typical request scores the whole catalogue: 1,682 model rows. The tensor
API also takes `USER_ID` (INT64 [1]) and `ITEM_IDS` (INT64 [m], MovieLens ids; default: all)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from contract.triton_config import TensorConfig
from serving.errors import InvalidRequestError
from serving.families.base import Decoded, Family
from serving.preprocess import Catalog, required

DEFAULT_K = 10


class RecommenderFamily(Family):
    adapter = "recommender"
    fields = {
        "user_id": "a MovieLens user id",
        "k": f"how many movies to answer, 1-100 (default {DEFAULT_K})",
        "candidate_item_ids": "the movies to rank (default: the whole catalogue)",
    }
    raw_inputs = (
        TensorConfig("USER_ID", "int64", (1,), optional=True),
        TensorConfig("ITEM_IDS", "int64", (-1,), optional=True),
    )
    tensor_fields = {"user_id": "USER_ID", "candidate_item_ids": "ITEM_IDS"}

    def __init__(self, name, section, artifact=None):
        super().__init__(name, section, artifact)
        self.catalog = Catalog.from_manifest(section, artifact("catalog"))

    def decode(self, body: Mapping) -> Decoded:
        k = body.get("k")
        feeds, candidates, k = self.catalog.encode(
            required(body.get("user_id"), "user_id"), DEFAULT_K if k is None else k, body.get("candidate_item_ids")
        )
        return Decoded(feeds, len(candidates), {"candidates": candidates, "k": k})

    def encode(self, outputs: Sequence[np.ndarray], decoded: Decoded) -> dict:
        return {"items": self.catalog.decode(outputs[0], decoded.state["candidates"], decoded.state["k"])}

    def example_body(self, rng: np.random.Generator) -> dict:
        return {"user_id": int(next(iter(self.catalog.user_row))), "k": DEFAULT_K}

    def example_tensors(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"USER_ID": np.array([self.example_body(rng)["user_id"]], dtype=np.int64)}  # the whole catalogue

    def decode_tensors(self, named: Mapping[str, np.ndarray]) -> Decoded:
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

    def typical_feeds(self, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # A typical request scores the whole catalogue for one user; smaller batches, part of it.
        items = len(self.catalog.items)
        users = rng.integers(0, len(self.catalog.user_features), -(-rows // items))
        return self.catalog.pairs(np.repeat(users, items)[:rows], np.tile(np.arange(items), len(users))[:rows])
