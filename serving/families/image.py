"""The image classifiers' adapter (`cnn`, `digits`): 28x28 grayscale images in, the family's classes out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serving.families.base import Decoded, Family, classes
from serving.preprocess import ImageCodec, required


class ImageFamily(Family):
    adapter = "image"
    fields = {"images": "1-64 images, each a list of rows of grayscale pixel values (28x28, 0-255)"}

    def __init__(self, name, section, artifact=None):
        super().__init__(name, section, artifact)
        self.codec = ImageCodec.from_manifest(section)

    def decode(self, body: Mapping) -> Decoded:
        feeds = self.codec.encode(required(body.get("images"), "images"))
        return Decoded(feeds, len(feeds["IMAGES"]))

    def encode(self, outputs: Sequence[np.ndarray], decoded: Decoded) -> dict:
        return {"predictions": classes(outputs[0], self.labels)}

    def example_body(self, rng: np.random.Generator) -> dict:
        return {"images": rng.integers(0, 256, (1, self.codec.height, self.codec.width)).astype(float).tolist()}

    def typical_feeds(self, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # Real pixels are not in the repository; a uniform image costs the same as a real one.
        shape = (rows, 1, self.codec.height, self.codec.width)
        return {"IMAGES": rng.uniform(self.codec.low, self.codec.high, shape).astype(np.float32)}
