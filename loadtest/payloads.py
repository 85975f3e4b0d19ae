"""Typical requests per family, built from the model repository alone (for the benchmarks)."""

from __future__ import annotations

import numpy as np

from serving.families import Family, family_adapter
from serving.repository import Repository

# The gateway's friendly endpoints for the built-in families (serving/service.py); every other family
# is served at /v1/predict/<family> with its adapter's fields.
FRIENDLY_PATHS = {"cnn": "/v1/classify_image", "rnn": "/v1/classify_text", "recsys": "/v1/recommend"}


def adapter(repo: Repository, family: str) -> Family:
    return family_adapter(family, repo.family(family), lambda name: repo.artifact(family, name))


def typical_requests(repo: Repository, rng: np.random.Generator) -> dict[str, tuple[str, dict]]:
    """{family: (path, JSON body)}: each family's example request (one image, one snippet, the whole
    catalogue for one user, an imported family's example row)."""
    return {
        family: (FRIENDLY_PATHS.get(family, f"/v1/predict/{family}"), adapter(repo, family).example_body(rng))
        for family in repo.families
    }


def model_inputs(repo: Repository, family: str, body: dict) -> dict[str, np.ndarray]:
    """The tensors the gateway would run for `body` (as its adapter builds them)."""
    return adapter(repo, family).decode(body).feeds
