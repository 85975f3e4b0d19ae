"""The cold-start fit: a new user's representation from a few ratings, in numpy (the serving half
fits one per request; training/coldstart.py meta-learns what it starts from, and evaluates it).

A variant's rating of item i for a user whose user-tower input is x, near the prior x0, is taken
to first order: r_i(x0 + d) ~ b_i + J_i . d, where b_i is the variant's rating at x0 and J_i the
gradient of the fp32 model's rating at x0 (exported per item, in the `recsys_cold_start.json`
artifact). Given k rated items s, the fit is ridge regression with a per-dimension penalty
`penalty` (the prior's precision, relative to the rating noise):

    d = argmin |r_s - b_s - J_s d|^2 + d' diag(penalty) d
      = diag(1/penalty) J_s' (J_s diag(1/penalty) J_s' + I)^-1 (r_s - b_s)

solved in the k x k form (k ratings, not the representation's ~112 dimensions): microseconds.

What is served is the equal-weight average of that fit and a second, simpler one: each item's mean
rating m_i (the training split's; a federated model's, the meta-training users') plus the user's
offset from the item means, shrunk towards zero: sum(r_s - m_s) / (k + shrinkage). Meta-learned,
each half's settings are trained for that half's own query error (training/coldstart.py); in the
measurements behind the README ("What the fit averages"), the average was better than either half
alone on each of five seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KS = (1, 3, 5, 10)  # the numbers of known ratings cold start is measured (and meta-trained) at
MAX_RATINGS = 100  # ratings one request may fit a new user from
RATING_RANGE = (1.0, 5.0)


def fit_offset(jacobian: np.ndarray, residual: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """The ridge offset d [D] from the support's gradients `jacobian` [k, D], its residuals
    r_s - b_s [k], and the per-dimension `penalty` [D] (all positive)."""
    scaled = jacobian / penalty  # J diag(1/penalty)
    gram = scaled @ jacobian.T + np.eye(len(residual), dtype=jacobian.dtype)
    return scaled.T @ np.linalg.solve(gram, residual)


def shrunk_offset(residual, shrinkage):
    """The user's rating offset from the item means: the mean of their residuals `residual` [k]
    (r_s - m_s), shrunk towards zero as if `shrinkage` more ratings had residual zero. numpy arrays
    or torch tensors alike (training/coldstart.py meta-trains through it)."""
    return residual.sum() / (len(residual) + shrinkage)


def averaged(fitted, from_means):
    """The served rating: the fit's half and the item means' half, each held to RATING_RANGE, averaged
    (numpy arrays or torch tensors alike)."""
    return (fitted.clip(*RATING_RANGE) + from_means.clip(*RATING_RANGE)) / 2


@dataclass(frozen=True)
class ColdStart:
    """One served kind's cold-start state: each catalogue item's row of the fit's design and the
    penalty, and each item's mean rating and the offset's shrinkage. (The `recsys_cold_start.json`
    artifact holds one per kind, by kind, and the prior's USER_FEATURES row: the one row the exported
    variants carry beyond the catalogue's users.)"""

    jacobian: np.ndarray  # float32 [items, D]: the fit's design, row by catalogue item
    penalty: np.ndarray  # float32 [D]
    item_means: np.ndarray  # float32 [items]
    shrinkage: float

    @classmethod
    def from_json(cls, entry: dict) -> ColdStart:
        missing = [name for name in ("jacobian", "penalty", "item_means", "shrinkage") if name not in entry]
        if missing:
            raise ValueError(
                f"the cold-start state has no {', '.join(missing)}: it was built by an earlier FlexServe; "
                "rebuild the recommender (`flexserve train --family recsys`)"
            )
        return cls(
            np.asarray(entry["jacobian"], dtype=np.float32),
            np.asarray(entry["penalty"], dtype=np.float32),
            np.asarray(entry["item_means"], dtype=np.float32),
            float(entry["shrinkage"]),
        )

    def to_json(self) -> dict:
        return {
            "jacobian": np.round(self.jacobian.astype(np.float64), 7).tolist(),
            "penalty": [float(v) for v in self.penalty],
            "item_means": [round(float(v), 6) for v in self.item_means],
            "shrinkage": float(self.shrinkage),
        }

    def predict(
        self, prior_ratings: np.ndarray, support: np.ndarray, ratings: np.ndarray, targets: np.ndarray
    ) -> np.ndarray:
        """Ratings of the catalogue rows `targets` for a new user who gave `ratings` to the rows
        `support`, from a variant's ratings at the prior: `prior_ratings` [len(support) + len(targets)],
        the support's first. The average of the fit and the item means with the user's offset."""
        k = len(support)
        offset = fit_offset(self.jacobian[support], ratings - prior_ratings[:k], self.penalty)
        fitted = prior_ratings[k:] + self.jacobian[targets] @ offset
        from_means = self.item_means[targets] + shrunk_offset(ratings - self.item_means[support], self.shrinkage)
        return averaged(fitted, from_means).astype(np.float32)
