"""The multi-task text adapter (`text_multitask`): the text family's requests (raw snippets, or `TEXT`
on the tensor API), one model pass, and an answer per text for every head the manifest names:
`{"polarity": {...}, "subjectivity": {...}}`. The model's LOGITS hold the heads side by side; the
manifest's `contract.heads` says which columns are whose."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.families.base import Decoded, classes
from serving.families.text import TextFamily


class MultiTaskTextFamily(TextFamily):
    adapter = "multitask_text"

    def __init__(self, name, section, artifact=None):
        super().__init__(name, section, artifact)
        self.heads = [(h["name"], slice(*h["columns"]), h["labels"]) for h in section.contract["heads"]]

    def encode(self, outputs: Sequence[np.ndarray], decoded: Decoded) -> dict:
        logits = outputs[0]
        answers = {name: classes(logits[:, columns], labels) for name, columns, labels in self.heads}
        return {"predictions": [{name: answers[name][row] for name, _, _ in self.heads} for row in range(len(logits))]}
