"""Raw requests -> model tensors, from the manifest's contract and artifacts alone.

Every check raises `InvalidRequestError(field, problem, accepted)` (the front end's 400 / gRPC
INVALID_ARGUMENT), or `UnprocessableRequestError` for a well-formed value the catalogue does not
hold (HTTP 422): the HTTP endpoints' schemas catch most malformed bodies before these checks run.
Nothing here imports `training/`; an integration test checks that these tensors equal the ones
training built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from contract.coldstart import MAX_RATINGS, RATING_RANGE
from contract.manifest import FamilySection
from serving.errors import InvalidRequestError, UnprocessableRequestError

MAX_BATCH = 64  # images or texts per request
MAX_TEXT_CHARS = 5_000  # per text: ~50x the longest Rotten Tomatoes snippet
MAX_K = 100  # recommendations per request
MAX_CANDIDATES = 10_000  # movies to rank per request (a bound on the body; the catalogue decides which)


def required(value: object, field: str, accepted: str = "see the API docs at /docs") -> object:
    if value is None:
        raise InvalidRequestError(field, "is missing", accepted)
    return value


def _batch(value: object, field: str, what: str) -> list:
    if not isinstance(value, list):
        raise InvalidRequestError(
            field, f"expected a list of {what}, got {type(value).__name__}", f"a list of 1 to {MAX_BATCH} {what}"
        )
    if not 1 <= len(value) <= MAX_BATCH:
        raise InvalidRequestError(field, f"{len(value)} {what}", f"a list of 1 to {MAX_BATCH} {what}")
    return value


@dataclass(frozen=True)
class ImageCodec:
    labels: list[str]
    low: float = 0.0
    high: float = 255.0
    height: int = 28
    width: int = 28

    @classmethod
    def from_manifest(cls, section: FamilySection) -> ImageCodec:
        low, high = section.contract["input_range"]
        _, _, height, width = section.inputs[0].shape
        return cls(section.contract["labels"], float(low), float(high), int(height), int(width))

    @property
    def accepted(self) -> str:
        return (
            f"a list of 1 to {MAX_BATCH} images, each {self.height} rows of {self.width} grayscale "
            f"pixel values in [{self.low:g}, {self.high:g}]"
        )

    def encode(self, images: object) -> dict[str, np.ndarray]:
        images = _batch(images, "images", "images")
        for i, image in enumerate(images):  # shape first: a ragged list must not reach numpy
            if (
                not isinstance(image, list)
                or len(image) != self.height
                or any(not isinstance(row, list) or len(row) != self.width for row in image)
            ):
                raise InvalidRequestError(f"images[{i}]", f"is not a {self.height}x{self.width} array", self.accepted)
        try:
            pixels = np.array(images, dtype=np.float32)
        except (TypeError, ValueError):
            bad = next(
                i
                for i, image in enumerate(images)
                if any(isinstance(p, bool) or not isinstance(p, (int, float)) for row in image for p in row)
            )
            raise InvalidRequestError(f"images[{bad}]", "holds a value that is not a number", self.accepted) from None
        if any(isinstance(p, bool) for image in images for row in image for p in row):
            raise InvalidRequestError("images", "holds true/false, not pixel values", self.accepted)
        finite = np.isfinite(pixels).all(axis=(1, 2))
        if not finite.all():
            raise InvalidRequestError(f"images[{int(np.argmin(finite))}]", "holds NaN or infinity", self.accepted)
        inside = ((pixels >= self.low) & (pixels <= self.high)).all(axis=(1, 2))
        if not inside.all():
            i = int(np.argmin(inside))
            raise InvalidRequestError(
                f"images[{i}]",
                f"has pixels outside [{self.low:g}, {self.high:g}] (min {pixels[i].min():g}, max {pixels[i].max():g})",
                self.accepted,
            )
        return {"IMAGES": pixels[:, None, :, :]}

    def decode(self, logits: np.ndarray) -> list[dict]:
        return _classes(logits, self.labels)


def _classes(logits: np.ndarray, labels: list[str]) -> list[dict]:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    best = probabilities.argmax(axis=1)
    return [
        {"label": labels[c], "class_id": int(c), "probability": round(float(probabilities[i, c]), 6)}
        for i, c in enumerate(best)
    ]


@dataclass(frozen=True)
class TextCodec:
    labels: list[str]
    index: dict[str, int]
    pattern: re.Pattern
    lowercase: bool
    max_tokens: int
    pad_id: int
    unk_id: int

    @classmethod
    def from_manifest(cls, section: FamilySection, vocab: list[str]) -> TextCodec:
        spec = section.contract["tokenizer"]
        return cls(
            section.contract.get("labels", []),  # a multi-task family's labels are per head
            {tok: i for i, tok in enumerate(vocab)},
            re.compile(spec["pattern"]),
            bool(spec["lowercase"]),
            int(spec["max_tokens"]),
            int(spec["pad_id"]),
            int(spec["unk_id"]),
        )

    accepted = f"a list of 1 to {MAX_BATCH} non-empty strings of at most {MAX_TEXT_CHARS} characters"

    def tokenize(self, text: str) -> list[str]:
        return self.pattern.findall(text.lower() if self.lowercase else text)

    def encode(self, texts: object) -> dict[str, np.ndarray]:
        texts = _batch(texts, "texts", "texts")
        ids = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequestError(f"texts[{i}]", f"expected a string, got {type(text).__name__}", self.accepted)
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidRequestError(f"texts[{i}]", f"{len(text)} characters is too long", self.accepted)
            tokens = self.tokenize(text)
            if not tokens:
                raise InvalidRequestError(f"texts[{i}]", "is empty (no word or punctuation mark)", self.accepted)
            # Longer texts are truncated, as in training (99% of the snippets fit).
            ids.append([self.index.get(tok, self.unk_id) for tok in tokens[: self.max_tokens]])
        width = max(len(row) for row in ids)  # the sequence axis is dynamic; padding is ignored
        matrix = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        for row, values in enumerate(ids):
            matrix[row, : len(values)] = values
        return {"TOKENS": matrix, "LENGTHS": np.array([len(r) for r in ids], dtype=np.int64)}

    def decode(self, logits: np.ndarray) -> list[dict]:
        return _classes(logits, self.labels)


class Catalog:
    """The recommender's users and movies (the `recsys_catalog.json` artifact) as model features."""

    def __init__(self, catalog: dict, rating_range: tuple[float, float]):
        genre_index = {g: i for i, g in enumerate(catalog["genres"])}
        items = catalog["items"]
        self.user_row = {_id_key(u["user_id"]): i for i, u in enumerate(catalog["users"])}
        self.item_row = {_id_key(it["item_id"]): i for i, it in enumerate(items)}
        self.items = items
        self.user_features = np.array([u["features"] for u in catalog["users"]], dtype=np.int64)
        self.item_features = np.array([it["features"] for it in items], dtype=np.int64)
        self.item_genres = np.zeros((len(items), len(genre_index)), dtype=np.float32)
        for row, item in enumerate(items):
            self.item_genres[row, [genre_index[g] for g in item["genres"]]] = 1.0
        self.item_title = np.array([it["title_tokens"] for it in items], dtype=np.int64)
        self.rating_range = rating_range

    @classmethod
    def from_manifest(cls, section: FamilySection, catalog: dict) -> Catalog:
        low, high = section.contract["rating_range"]
        return cls(catalog, (float(low), float(high)))

    def pairs(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs for (user, item) pairs given as catalogue row indices."""
        return {
            "USER_FEATURES": self.user_features[users],
            "ITEM_FEATURES": self.item_features[items],
            "ITEM_GENRES": self.item_genres[items],
            "ITEM_TITLE": self.item_title[items],
        }

    def rows(self, user: int, items: np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs scoring catalogue rows `items` for catalogue user row `user`."""
        return self.rows_for(self.user_features[user], items)

    def rows_for(self, user_features: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs scoring catalogue rows `items` for the user whose USER_FEATURES row this is."""
        return {
            "USER_FEATURES": np.repeat(user_features[None, :].astype(np.int64), len(items), axis=0),
            "ITEM_FEATURES": self.item_features[items],
            "ITEM_GENRES": self.item_genres[items],
            "ITEM_TITLE": self.item_title[items],
        }

    def encode(
        self, user_id: object, k: object, candidate_item_ids: object
    ) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """(model inputs, candidate rows, k) for one recommend request."""
        feeds, candidates = self.score(user_id, candidate_item_ids)
        _check_k(k, len(candidates))
        return feeds, candidates, k

    def score(self, user_id: object, candidate_item_ids: object) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(model inputs, candidate rows) scoring the candidates (default: the whole catalogue) for a user."""
        user, candidates = self._user(user_id), self._candidates(candidate_item_ids)
        return self.rows(user, candidates), candidates

    def _user(self, user_id: object) -> int:
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise InvalidRequestError(
                "user_id",
                f"expected an integer, got {user_id!r}",
                f"a MovieLens user id the catalogue knows ({len(self.user_row)} users; a new user sends ratings)",
            )
        user = self.user_row.get(str(user_id))
        if user is None:
            raise UnprocessableRequestError(
                "user_id",
                f"{user_id} is not a known user",
                f"a MovieLens user id the catalogue knows ({len(self.user_row)} users; a new user sends ratings)",
            )
        return user

    def _candidates(self, candidate_item_ids: object) -> np.ndarray:
        if candidate_item_ids is None:
            candidates = np.arange(len(self.items))
        else:
            accepted = f"a list of 1 to {len(self.items)} distinct known movie ids (integers)"
            if not isinstance(candidate_item_ids, list) or not 1 <= len(candidate_item_ids) <= MAX_CANDIDATES:
                raise InvalidRequestError("candidate_item_ids", "is not a list of the accepted length", accepted)
            rows = []
            for i, item_id in enumerate(candidate_item_ids):
                if isinstance(item_id, bool) or not isinstance(item_id, int):
                    raise InvalidRequestError(
                        f"candidate_item_ids[{i}]", f"expected an integer, got {item_id!r}", accepted
                    )
                row = self.item_row.get(str(item_id))
                if row is None:
                    raise UnprocessableRequestError(
                        f"candidate_item_ids[{i}]", f"{item_id} is not a known movie", accepted
                    )
                rows.append(row)
            if len(set(rows)) != len(rows):
                raise InvalidRequestError("candidate_item_ids", "lists a movie twice", accepted)
            candidates = np.array(rows, dtype=np.int64)
        return candidates

    def rated(self, ratings: object) -> tuple[np.ndarray, np.ndarray]:
        """(catalogue rows, ratings) a new user gave: the `ratings` field, [{"item_id", "rating"}, ...]."""
        low, high = RATING_RANGE
        accepted = (
            f'a list of 1 to {MAX_RATINGS} {{"item_id": a known movie id, "rating": {low:g} to {high:g}}}, '
            "each movie once"
        )
        if not isinstance(ratings, list) or not 1 <= len(ratings) <= MAX_RATINGS:
            got = f"{len(ratings)} ratings" if isinstance(ratings, list) else f"got {type(ratings).__name__}"
            raise InvalidRequestError("ratings", got, accepted)
        rows, values, seen = [], [], {}
        for i, entry in enumerate(ratings):
            if not isinstance(entry, dict) or set(entry) != {"item_id", "rating"}:
                raise InvalidRequestError(f"ratings[{i}]", f"got {entry!r}", accepted)
            item_id, rating = entry["item_id"], entry["rating"]
            if isinstance(item_id, bool) or not isinstance(item_id, int):
                raise InvalidRequestError(f"ratings[{i}].item_id", f"expected an integer, got {item_id!r}", accepted)
            row = self.item_row.get(str(item_id))
            if row is None:
                raise UnprocessableRequestError(f"ratings[{i}].item_id", f"{item_id} is not a known movie", accepted)
            if row in seen:
                raise InvalidRequestError(
                    f"ratings[{i}].item_id", f"{item_id} is rated twice (also ratings[{seen[row]}])", accepted
                )
            if isinstance(rating, bool) or not isinstance(rating, int | float) or not low <= rating <= high:
                raise InvalidRequestError(
                    f"ratings[{i}].rating", f"got {rating!r}", f"a number from {low:g} to {high:g}"
                )
            seen[row] = i
            rows.append(row)
            values.append(rating)
        return np.array(rows, dtype=np.int64), np.array(values, dtype=np.float32)

    def cold_start(
        self, prior_row: np.ndarray, ratings: object, k: object, candidate_item_ids: object
    ) -> tuple[dict[str, np.ndarray], dict]:
        """(model inputs, the fit's state) for a new user who sent `ratings`: every catalogue row the
        fit needs (the rated movies and the candidates, default: every movie not rated) rated as the
        prior user, `prior_row`, whom the exported variants carry beyond the catalogue's users."""
        support, values = self.rated(ratings)
        if candidate_item_ids is None:
            candidates = np.setdiff1d(np.arange(len(self.items)), support)
            if not len(candidates):
                raise UnprocessableRequestError(
                    "ratings", "rates every movie: none is left to recommend", "fewer ratings, or candidate_item_ids"
                )
        else:
            candidates = self._candidates(candidate_item_ids)
        _check_k(k, len(candidates))
        rows, where = np.unique(np.concatenate([support, candidates]), return_inverse=True)
        feeds = self.rows_for(prior_row, rows)
        fit = {"support": support, "ratings": values, "targets": candidates, "where": where}
        return feeds, {"candidates": candidates, "k": k, "cold_start": fit}

    def decode(self, ratings: np.ndarray, candidates: np.ndarray, k: int) -> list[dict]:
        scores = ratings.reshape(-1)
        top = np.argsort(-scores, kind="stable")[:k]
        return [
            {
                "item_id": _as_int(self.items[candidates[i]]["item_id"]),
                "title": self.items[candidates[i]]["title"],
                "predicted_rating": round(float(scores[i]), 4),
            }
            for i in top
        ]


def _check_k(k: object, candidates: int) -> None:
    limit = min(MAX_K, candidates)
    accepted = f"an integer from 1 to {limit} (the candidates, at most {MAX_K})"
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidRequestError("k", f"got {k!r}", accepted)
    if k > limit:
        raise UnprocessableRequestError("k", f"{k} is more than the {candidates} candidates", accepted)


def _id_key(value: object) -> str:
    return str(value)


def _as_int(value: object) -> int | str:
    text = str(value)
    return int(text) if text.isdigit() else text
