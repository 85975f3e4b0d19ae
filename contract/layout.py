"""Where a model repository's files live, and how a new version replaces the live one.

    <repo>/current -> versions/<id>        the live version: a symlink, switched atomically
    <repo>/versions/<id>/manifest.json     a complete repository (see contract/manifest.py)
    <repo>/versions/<id>/<variant>/...

Writers (`flexserve train`, `flexserve import`, `flexserve profile`) never touch the live version:
they fill a staging copy of it (model files hard-linked, so unchanged weights cost nothing) and switch `current` to
it in one `rename`, so a reader sees the old repository or the new one, never half of either. One
writer at a time (a lock on `<repo>/.lock`): a second one waits, then starts from the first one's
result, so neither loses the other's families. Each version is itself a valid Triton model
repository (one folder per variant). The newest `KEEP_VERSIONS` versions are kept, and always the
one live before the switch, so a server still reading it keeps its files.

A repository written before versions existed (`manifest.json` at `<repo>`) is read where it is;
the first writer moves it into a version.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CURRENT, VERSIONS, MANIFEST_FILE = "current", "versions", "manifest.json"
KEEP_VERSIONS = 3  # the live one and two before it: servers still draining an older one keep its files
LOCK_FILE = ".lock"
LINK_FROM_BYTES = 1 << 20  # files this big (model weights) are hard-linked into a staged version; smaller ones copied


def live_dir(root: str | Path) -> Path:
    """The directory holding the live version's manifest: `<repo>/current`, resolved; or `<repo>`
    itself for an unversioned repository (whether or not it exists yet)."""
    root = Path(root)
    current = root / CURRENT
    if current.exists():
        return current.resolve()
    return root


def version_of(root: str | Path) -> str | None:
    """The live version's id, or None for an unversioned (or missing) repository."""
    current = Path(root) / CURRENT
    return current.resolve().name if current.exists() else None


def _next_id(versions: Path) -> str:
    numbers = [int(p.name) for p in versions.iterdir() if p.name.isdigit()] if versions.exists() else []
    return f"{max(numbers, default=0) + 1:06d}"


def _share(src: str, dst: str) -> None:
    """Put `src` into a staged version: hard-link big files (weights: free, and writers replace them
    whole), copy small ones (manifests, configs: a writer that rewrites one in place stays safe)."""
    if os.path.getsize(src) >= LINK_FROM_BYTES:
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def _legacy_entries(root: Path) -> list[Path]:
    """An unversioned repository's own files: everything at the root but the versioning entries."""
    return [p for p in root.iterdir() if p.name not in (CURRENT, VERSIONS) and not p.name.startswith(".")]


@contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    with open(root / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger("flexserve.layout").warning(
                "another writer (train, import or profile) is writing %s: waiting for it to finish", root
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def new_version(root: str | Path) -> Iterator[Path]:
    """Yield a staging directory holding a copy of the live version; when the block ends without an
    exception, it becomes the live version (and old versions are pruned); otherwise it is removed.

    Replace big files in the staging directory (remove, or write to a temporary name and rename); do
    not write into them: they are hard links shared with the live version (see `_share`)."""
    root = Path(root)
    versions = root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    with _writer_lock(root):
        yield from _staged(root, versions)


def _staged(root: Path, versions: Path) -> Iterator[Path]:
    current = root / CURRENT
    if current.exists() and not current.is_symlink():  # a copy whose link was dereferenced: adopt it
        adopted = _next_id(versions)
        os.rename(current, versions / adopted)
        os.symlink(f"{VERSIONS}/{adopted}", current)
    legacy = not current.exists() and (root / MANIFEST_FILE).exists()
    vid = _next_id(versions)
    stage = versions / f".{vid}.staging"
    shutil.rmtree(stage, ignore_errors=True)
    if current.exists():
        shutil.copytree(current.resolve(), stage, copy_function=_share)
    elif legacy:
        stage.mkdir()
        for entry in _legacy_entries(root):
            if entry.is_dir():
                shutil.copytree(entry, stage / entry.name, copy_function=_share)
            else:
                _share(entry, stage / entry.name)
    else:
        stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    previous = current.resolve().name if current.exists() else None
    os.rename(stage, versions / vid)
    switch(root, vid)
    if legacy:  # now inside the version; nothing reads them at the root any more
        for entry in _legacy_entries(root):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for old in sorted((p for p in versions.iterdir() if p.name.isdigit()), key=lambda p: p.name)[:-KEEP_VERSIONS]:
        if old.name != previous:
            shutil.rmtree(old, ignore_errors=True)


def switch(root: str | Path, vid: str) -> None:
    """Make the kept version `vid` the live one, in one atomic rename (a new version, or a rollback)."""
    root = Path(root)
    if not vid.isdigit() or not (root / VERSIONS / vid).is_dir():
        kept = sorted(p.name for p in (root / VERSIONS).glob("[0-9]*")) if (root / VERSIONS).exists() else []
        raise FileNotFoundError(f"{root} has no version {vid!r}; kept: {', '.join(kept) or 'none'}")
    link = root / f".{CURRENT}.{vid}"
    link.unlink(missing_ok=True)
    os.symlink(f"{VERSIONS}/{vid}", link)
    os.replace(link, root / CURRENT)
