"""The family contract: one adapter per family turns its requests into model tensors and the model's
outputs into answers, as LitServe's `LitAPI` does per model. The gateway, the Triton router models and
the profiler go through it; nothing else knows a family by its name.

An adapter answers, for its family:
- what it is measured by: `metric`, `higher_is_better`, `floor_field` (`min_accuracy`, `max_rmse`);
- the friendly JSON API: `fields` (the body's fields and their meaning), `decode` (body -> tensors),
  `finish` (the variant's outputs -> the request's, where a family fits something per request),
  `encode` (outputs -> answer), `example_body`;
- the tensor API (the Open Inference Protocol on the gateway, and Triton's `<family>_router`):
  `decode_tensors` (named arrays -> tensors: the model's own inputs, or the `raw_inputs` a client
  may send instead, such as raw text);
- profiling: `typical_feeds` (a typical request's tensors at a given number of model rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from contract.manifest import FamilySection
from contract.triton_config import TensorConfig
from serving.errors import InvalidRequestError
from serving.preprocess import MAX_BATCH
from serving.tensors import check_dtype, conform


@dataclass
class Decoded:
    """A request as tensors: the model's inputs, its rows, and what `encode` needs to shape the answer."""

    feeds: dict[str, np.ndarray]
    rows: int
    state: dict = field(default_factory=dict)


class Family:
    """The base adapter: the tensor API from the manifest's specs; subclasses add a friendly API."""

    adapter: ClassVar[str] = "tensor"
    # The friendly body's fields (besides the routing fields every endpoint takes): name -> meaning.
    fields: ClassVar[Mapping[str, str]] = {}
    # Inputs a client may send the tensor API instead of the model's own (e.g. raw text).
    raw_inputs: ClassVar[tuple[TensorConfig, ...]] = ()
    # Friendly field names -> tensor names, so that tensor-API errors name what the client sent.
    tensor_fields: ClassVar[Mapping[str, str]] = {}

    def __init__(self, name: str, section: FamilySection, artifact=None):
        """`artifact(name)`: a preprocessing artifact of the family, checked against its sha256."""
        self.name, self.section = name, section
        self._artifact = artifact

    # -- what it is measured by ------------------------------------------------------------------
    @property
    def metric(self) -> str:
        return self.section.metric

    @property
    def higher_is_better(self) -> bool:
        return self.section.higher_is_better

    @property
    def floor_field(self) -> str:
        return f"min_{self.metric}" if self.higher_is_better else f"max_{self.metric}"

    def floor(self, fields: Mapping) -> object:
        """The quality floor a request names (`min_accuracy`, `max_rmse`, ... as this family's metric
        has it), or None; a floor under another metric's or direction's name is refused by name."""
        for name in fields:
            if (name.startswith("min_") or name.startswith("max_")) and name != self.floor_field:
                raise InvalidRequestError(
                    name,
                    f"{self.name} is measured by {self.metric} ({'higher' if self.higher_is_better else 'lower'} "
                    "is better)",
                    f"{self.floor_field}: the {'lowest' if self.higher_is_better else 'highest'} {self.metric} you "
                    "accept, or none",
                )
        return fields.get(self.floor_field)

    @property
    def labels(self) -> list[str] | None:
        return self.section.contract.get("labels")

    # -- the friendly JSON API -------------------------------------------------------------------
    def decode(self, body: Mapping) -> Decoded:
        raise NotImplementedError

    def encode(self, outputs: Sequence[np.ndarray], decoded: Decoded) -> dict:
        raise NotImplementedError

    def example_body(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def finish(self, outputs: list[np.ndarray], decoded: Decoded, variant: str) -> list[np.ndarray]:
        """The model's outputs as the request asked for them, once `variant` has run (every door calls
        it before `encode` or the tensor answer): as they are, unless the family fits something to the
        request on top (the recommender's cold-start users)."""
        return outputs

    # -- the tensor API --------------------------------------------------------------------------
    def example_tensors(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`example_body` as the tensor API takes it: the raw inputs where the family has them (what a
        client sends Triton's router), else the model's own."""
        return self.decode(self.example_body(rng)).feeds

    def decode_tensors(self, named: Mapping[str, np.ndarray]) -> Decoded:
        """The model's own inputs, checked against the manifest's specs."""
        extra = "".join(f"; or {t.name}" for t in self.raw_inputs)
        feeds = conform(named, self.section.inputs, extra=extra)
        rows, most = len(next(iter(feeds.values()))), max(MAX_BATCH, self.section.rows_per_request)
        if rows > most:
            raise InvalidRequestError(self.section.inputs[0].name, f"has {rows} rows", f"1 to {most} rows")
        return Decoded(feeds, rows)

    def raw(self, named: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
        """The raw input `name` (one of `raw_inputs`) if sent, checked against its datatype."""
        value = named.get(name)
        if value is None:
            return None
        check_dtype(name, value, next(t.dtype for t in self.raw_inputs if t.name == name))
        return value

    def _renamed(self, error: InvalidRequestError) -> InvalidRequestError:
        """An error from a friendly codec, naming the tensor the client sent instead of the JSON field."""
        for json_name, tensor in self.tensor_fields.items():
            if error.field.startswith(json_name):
                return InvalidRequestError(tensor + error.field[len(json_name) :], error.problem, error.accepted)
        return error

    @classmethod
    def padded_inputs(cls, section: FamilySection) -> dict[str, int]:
        """Inputs whose dynamic axis may be padded (with this value) so that requests share a batch."""
        return {}

    # -- profiling -------------------------------------------------------------------------------
    def typical_feeds(self, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError


def classes(scores: np.ndarray, labels: Sequence[str] | None, probabilities: bool = False) -> list[dict]:
    """Per row: the most probable class, its label (if the family has labels) and its probability
    (`scores` are logits, softmaxed here, unless `probabilities` says they already are)."""
    p = scores
    if not probabilities:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        p = shifted / shifted.sum(axis=1, keepdims=True)
    best = p.argmax(axis=1)
    return [
        {**({"label": labels[c]} if labels else {}), "class_id": int(c), "probability": round(float(p[i, c]), 6)}
        for i, c in enumerate(best)
    ]
