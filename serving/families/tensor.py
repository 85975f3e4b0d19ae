"""The generic adapter: any ONNX model, served from its manifest entry alone (input and output
names, dtypes and shapes, optional label names, example rows). `flexserve import` writes such
families. Its friendly API takes `{"inputs": {name: rows}}`; its tensor API, the model's inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from contract.dtypes import dtype
from serving.errors import InvalidRequestError
from serving.families.base import Decoded, Family, classes


class TensorFamily(Family):
    adapter = "tensor"
    fields = {"inputs": "an object: each model input's name -> its rows (nested lists), at most 64 rows"}

    @property
    def example_inputs(self) -> dict[str, list]:
        """One typical row per input, as `flexserve import` took it from the evaluation set."""
        return dict(self.section.contract.get("example_inputs") or {})

    def decode(self, body: Mapping) -> Decoded:
        accepted = "an object: " + ", ".join(
            f"{s.name} ({s.dtype}, shape {list(s.shape)})" for s in self.section.inputs
        )
        inputs = body.get("inputs")
        if not isinstance(inputs, Mapping):
            problem = "is missing" if inputs is None else f"expected an object, got {type(inputs).__name__}"
            raise InvalidRequestError("inputs", problem, accepted)
        named = {}
        for spec in self.section.inputs:
            if spec.name not in inputs:
                raise InvalidRequestError(f"inputs.{spec.name}", "is missing", accepted)
            try:
                named[spec.name] = np.asarray(inputs[spec.name], dtype=dtype(spec.dtype).numpy)
            except (TypeError, ValueError, OverflowError):
                raise InvalidRequestError(f"inputs.{spec.name}", f"is not an array of {spec.dtype}", accepted) from None
        unknown = sorted(set(inputs) - set(named))
        if unknown:
            raise InvalidRequestError(f"inputs.{unknown[0]}", "is not an input of this model", accepted)
        try:
            return self.decode_tensors(named)
        except InvalidRequestError as error:  # named as the body names it
            raise InvalidRequestError(f"inputs.{error.field}", error.problem, error.accepted) from None

    def encode(self, outputs: Sequence[np.ndarray], decoded: Decoded) -> dict:
        first = outputs[0]
        if self.section.task == "classification" and first.ndim == 2:
            already = self.section.contract.get("scores") == "probabilities"  # as `flexserve import` found them
            return {"predictions": classes(first, self.labels, probabilities=already)}
        if self.section.task == "regression" and first.size == decoded.rows:
            return {"predictions": [{"value": round(float(v), 6)} for v in first.reshape(-1)]}
        return {
            "outputs": {spec.name: value.tolist() for spec, value in zip(self.section.outputs, outputs, strict=False)}
        }

    def example_body(self, rng: np.random.Generator) -> dict:
        return {"inputs": {name: rows[:1] for name, rows in self.example_inputs.items()}}

    def typical_feeds(self, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The example row repeated (a model's own values are the safe ones: ids stay in range)."""
        examples = self.example_inputs
        feeds = {}
        for spec in self.section.inputs:
            if spec.name in examples:
                one = np.asarray(examples[spec.name], dtype=dtype(spec.dtype).numpy)[:1]
            else:  # no example recorded: ones, at each dynamic axis's size 1
                one = np.ones([1] + [1 if d == -1 else d for d in spec.shape[1:]], dtype=dtype(spec.dtype).numpy)
            feeds[spec.name] = np.repeat(one, rows, axis=0)
        return feeds
