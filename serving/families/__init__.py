"""Family adapters (see `base.py` for the contract): `image`, `text`, `recommender`, `multitask_text` for
the built-in families, `tensor` for any other ONNX model. A manifest section names its adapter; sections written
before adapters were named get theirs from the built-in family's name."""

from __future__ import annotations

from collections.abc import Callable

from contract.manifest import FamilySection
from serving.families.base import Decoded, Family
from serving.families.image import ImageFamily
from serving.families.multitask import MultiTaskTextFamily
from serving.families.recommender import RecommenderFamily
from serving.families.tensor import TensorFamily
from serving.families.text import TextFamily

ADAPTERS: dict[str, type[Family]] = {
    f.adapter: f for f in (ImageFamily, TextFamily, RecommenderFamily, MultiTaskTextFamily, TensorFamily)
}
_BEFORE_ADAPTERS = {"cnn": "image", "rnn": "text", "recsys": "recommender"}


def adapter_name(name: str, section: FamilySection) -> str:
    return section.adapter or _BEFORE_ADAPTERS.get(name, "tensor")


def family_adapter(name: str, section: FamilySection, artifact: Callable[[str], object] | None = None) -> Family:
    """The adapter serving family `name`; `artifact(name)` reads one of its preprocessing artifacts."""
    kind = adapter_name(name, section)
    if kind not in ADAPTERS:
        raise ValueError(f"family {name!r} names the adapter {kind!r}: expected one of {', '.join(ADAPTERS)}")
    return ADAPTERS[kind](name, section, artifact)


__all__ = ["ADAPTERS", "Decoded", "Family", "adapter_name", "family_adapter"]
