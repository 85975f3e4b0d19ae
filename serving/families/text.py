"""The text classifier's adapter (`rnn`): raw snippets in (tokenised here with the training
vocabulary), fresh or rotten out. The tensor API also takes raw text as `TEXT` (BYTES, one per row)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from contract.triton_config import TensorConfig
from serving.errors import InvalidRequestError
from serving.families.base import Decoded, Family, classes
from serving.preprocess import TextCodec, required

EXAMPLE_TEXT = "An intelligent, beautifully acted drama that never quite finds its pace."
TYPICAL_TOKENS = 22  # the median Rotten Tomatoes snippet


class TextFamily(Family):
    adapter = "text"
    fields = {"texts": "1-64 texts of at most 5,000 characters each"}
    raw_inputs = (TensorConfig("TEXT", "object", (-1,), optional=True),)
    tensor_fields = {"texts": "TEXT"}

    def __init__(self, name, section, artifact=None):
        super().__init__(name, section, artifact)
        self.vocab = artifact("vocab")
        self.codec = TextCodec.from_manifest(section, self.vocab)

    def decode(self, body: Mapping) -> Decoded:
        feeds = self.codec.encode(required(body.get("texts"), "texts"))
        return Decoded(feeds, len(feeds["TOKENS"]))

    def encode(self, outputs: Sequence[np.ndarray], decoded: Decoded) -> dict:
        return {"predictions": classes(outputs[0], self.labels)}

    def example_body(self, rng: np.random.Generator) -> dict:
        return {"texts": [EXAMPLE_TEXT]}

    def example_tensors(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"TEXT": np.array([t.encode() for t in self.example_body(rng)["texts"]], dtype=object)}

    def decode_tensors(self, named: Mapping[str, np.ndarray]) -> Decoded:
        if "TEXT" not in named:
            decoded = super().decode_tensors(named)
            tokens, lengths = decoded.feeds["TOKENS"], decoded.feeds["LENGTHS"]
            if tokens.size and not 0 <= tokens.min() <= tokens.max() < len(self.vocab):
                raise InvalidRequestError(
                    "TOKENS", "holds an id outside the vocabulary", f"ids 0 to {len(self.vocab) - 1}"
                )
            if not (1 <= lengths).all() or not (lengths <= tokens.shape[1]).all():
                raise InvalidRequestError(
                    "LENGTHS", "holds a length outside the row", f"1 to {tokens.shape[1]} per row"
                )
            return decoded
        texts = [
            t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
            for t in self.raw(named, "TEXT").reshape(-1)
        ]
        try:
            feeds = self.codec.encode(texts)
        except InvalidRequestError as error:
            raise self._renamed(error) from None
        return Decoded(feeds, len(texts))

    @classmethod
    def padded_inputs(cls, section) -> dict[str, int]:
        return {"TOKENS": int(section.contract["tokenizer"]["pad_id"])}  # the model reads LENGTHS, not the padding

    def typical_feeds(self, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = rng.integers(2, len(self.vocab), (rows, TYPICAL_TOKENS)).astype(np.int64)
        return {"TOKENS": tokens, "LENGTHS": np.full(rows, TYPICAL_TOKENS, dtype=np.int64)}
