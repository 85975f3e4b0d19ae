"""Repository versions: a writer stages a copy and switches the live version in one rename."""

import json
import os

import pytest

from contract.layout import KEEP_VERSIONS, LINK_FROM_BYTES, live_dir, new_version, switch, version_of


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_new_version_becomes_live_only_when_complete(tmp_path):
    assert live_dir(tmp_path) == tmp_path and version_of(tmp_path) is None
    with new_version(tmp_path) as stage:
        write(stage / "manifest.json", "{}")
        write(stage / "m" / "1" / "model.onnx", "v1")
        assert version_of(tmp_path) is None  # nothing is live while it is staged
    assert version_of(tmp_path) == "000001" and (live_dir(tmp_path) / "m" / "1" / "model.onnx").read_text() == "v1"
    assert os.readlink(tmp_path / "current") == "versions/000001"  # relative: the folder can move


def test_a_failed_writer_leaves_the_live_version_alone(tmp_path):
    with new_version(tmp_path) as stage:
        write(stage / "manifest.json", '{"v": 1}')
    with pytest.raises(RuntimeError), new_version(tmp_path) as stage:
        write(stage / "manifest.json", '{"v": 2}')
        raise RuntimeError("the build failed")
    assert json.loads((live_dir(tmp_path) / "manifest.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["000001"]  # no staging left behind


def test_big_files_are_shared_and_replaced_ones_are_not(tmp_path):
    weights = "w" * LINK_FROM_BYTES
    with new_version(tmp_path) as stage:
        write(stage / "keep.onnx", weights)
        write(stage / "swap.onnx", weights)
    first = live_dir(tmp_path)
    with new_version(tmp_path) as stage:
        assert (stage / "keep.onnx").stat().st_ino == (first / "keep.onnx").stat().st_ino  # a hard link
        tmp = stage / "swap.tmp"
        tmp.write_text("new")
        os.replace(tmp, stage / "swap.onnx")  # writers replace big files; they never write into them
    assert (first / "swap.onnx").read_text() == weights and (live_dir(tmp_path) / "swap.onnx").read_text() == "new"


def test_old_versions_are_pruned_to_the_newest_few(tmp_path):
    for i in range(KEEP_VERSIONS + 2):
        with new_version(tmp_path) as stage:
            write(stage / "manifest.json", str(i))
    kept = sorted(p.name for p in (tmp_path / "versions").iterdir())
    assert len(kept) == KEEP_VERSIONS and kept[-1] == version_of(tmp_path)


def test_an_unversioned_repository_is_read_in_place_and_moved_into_a_version_by_its_first_writer(tmp_path):
    write(tmp_path / "manifest.json", "legacy")
    write(tmp_path / "m" / "1" / "model.onnx", "weights")
    assert live_dir(tmp_path) == tmp_path
    with new_version(tmp_path) as stage:
        assert (stage / "m" / "1" / "model.onnx").read_text() == "weights"
    assert version_of(tmp_path) == "000001" and not (tmp_path / "manifest.json").exists()
    assert (live_dir(tmp_path) / "manifest.json").read_text() == "legacy"


def test_a_copy_that_dereferenced_the_link_is_adopted(tmp_path):
    write(tmp_path / "current" / "manifest.json", "copied")  # `cp -rL` made `current` a real folder
    with new_version(tmp_path) as stage:
        write(stage / "extra", "x")
    assert (tmp_path / "current").is_symlink() and (live_dir(tmp_path) / "manifest.json").read_text() == "copied"


def test_switch_makes_a_kept_version_live_and_refuses_one_that_is_not_kept(tmp_path):
    for v in (1, 2):
        with new_version(tmp_path) as stage:
            write(stage / "manifest.json", f'{{"v": {v}}}')
    switch(tmp_path, "000001")
    assert version_of(tmp_path) == "000001" and json.loads((live_dir(tmp_path) / "manifest.json").read_text()) == {
        "v": 1
    }
    with pytest.raises(FileNotFoundError, match="no version '000009'; kept: 000001, 000002"):
        switch(tmp_path, "000009")
    assert version_of(tmp_path) == "000001"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".lock"]  # no link left behind


def test_a_second_writer_waits_and_starts_from_the_first_ones_result(tmp_path):
    import threading

    seen = []
    with new_version(tmp_path) as stage:
        write(stage / "a.json", "from the first writer")

        def second() -> None:
            with new_version(tmp_path) as other:
                seen.append(sorted(p.name for p in other.iterdir()))
                write(other / "b.json", "from the second writer")

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive() and not seen  # blocked while the first one writes
    thread.join(timeout=10)
    assert seen == [["a.json"]]  # it copied the first one's version, not the one before it
    assert sorted(p.name for p in live_dir(tmp_path).iterdir()) == ["a.json", "b.json"]


def test_the_version_live_before_a_switch_is_never_pruned(tmp_path):
    for v in range(1, KEEP_VERSIONS + 1):
        with new_version(tmp_path) as stage:
            write(stage / "manifest.json", f'{{"v": {v}}}')
    switch(tmp_path, "000001")  # a rollback to the oldest kept
    with new_version(tmp_path) as stage:
        write(stage / "manifest.json", '{"v": "new"}')
    kept = sorted(p.name for p in (tmp_path / "versions").iterdir())
    assert "000001" in kept  # a server may still be draining it
