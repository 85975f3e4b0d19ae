"""Typical requests per family, built from the model repository alone (for the benchmarks)."""

from __future__ import annotations

import numpy as np

from serving.preprocess import codec_for
from serving.repository import Repository

PATHS = {"cnn": "/v1/classify_image", "rnn": "/v1/classify_text", "recsys": "/v1/recommend"}
EXAMPLE_TEXT = "An intelligent, beautifully acted drama that never quite finds its pace."


def typical_requests(repo: Repository, rng: np.random.Generator) -> dict[str, tuple[str, dict]]:
    """{family: (path, JSON body)}: one image, one snippet, the whole catalogue for one user."""
    bodies = {}
    if "cnn" in repo.families:
        bodies["cnn"] = {"images": rng.integers(0, 256, (1, 28, 28)).astype(float).tolist()}
    if "rnn" in repo.families:
        bodies["rnn"] = {"texts": [EXAMPLE_TEXT]}
    if "recsys" in repo.families:
        first_user = repo.artifact("recsys", "catalog")["users"][0]["user_id"]
        bodies["recsys"] = {"user_id": int(first_user), "k": 10}
    return {family: (PATHS[family], body) for family, body in bodies.items()}


def model_inputs(repo: Repository, family: str, body: dict) -> dict[str, np.ndarray]:
    """The tensors the gateway would run for `body` (as its codecs build them)."""
    codec = codec_for(repo, family)
    if codec is None:
        raise ValueError(f"no typical request for family {family!r}: the built-in families are cnn, rnn and recsys")
    if family == "cnn":
        return codec.encode(body["images"])
    if family == "rnn":
        return codec.encode(body["texts"])
    return codec.encode(body["user_id"], body["k"], body.get("candidate_item_ids"))[0]
