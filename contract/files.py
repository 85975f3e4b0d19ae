"""File digests: every file the manifest names carries its sha256, checked before it is served."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_replacing(path: str | Path, data: str | bytes) -> None:
    """Write `path` as a new file (a temporary name, then one rename): readers see the old content or
    the new, and a hard link to the old file (another repository version) keeps the old content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
