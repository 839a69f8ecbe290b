"""vistok.atomic (artifacts appear whole or not at all) and vistok.cache (built once per parameter set)."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

import vistok.atomic
from vistok.atomic import PARTIAL_TAG, atomic_path
from vistok.cache import cache_key, cached, cached_at


def hidden(folder: Path) -> list[str]:
    """Temporaries and moved-aside copies left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def write_tree(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def tree(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def fail_renames_of_temporaries(monkeypatch) -> None:
    """Make renaming a temporary into place fail, as a full or vanished filesystem would."""
    real_rename = os.rename

    def rename(src, dst):
        if PARTIAL_TAG in Path(src).name:
            raise OSError(errno.EIO, "simulated I/O error", str(src))
        real_rename(src, dst)

    monkeypatch.setattr(vistok.atomic.os, "rename", rename)
    monkeypatch.setattr(vistok.atomic.os, "replace", rename)


# ---- atomic_path ------------------------------------------------------------------------------------------


def test_a_file_is_published_whole_and_replaces_the_old_one(tmp_path):
    final = tmp_path / "sub" / "model.ckpt"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(f".{final.name}{PARTIAL_TAG}")
        assert not final.exists()  # nothing under the real name while writing
        tmp.write_text("one")
    with atomic_path(final) as tmp:
        tmp.write_text("two")
    assert final.read_text() == "two" and hidden(final.parent) == []


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "model.ckpt"
    final.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(final) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert final.read_text() == "old" and hidden(tmp_path) == []


def test_a_failure_mid_write_keeps_the_old_directory_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "export"
    final.mkdir()
    write_tree(final, {"a": "old a", "b": "old b"})
    with pytest.raises(RuntimeError):
        with atomic_path(final, directory=True) as tmp:
            assert tmp.is_dir() and not any(tmp.iterdir())
            (tmp / "a").write_text("new a")
            raise RuntimeError("killed mid-write")
    assert tree(final) == {"a": "old a", "b": "old b"} and hidden(tmp_path) == []


def test_a_directory_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "export"
    final.mkdir()
    write_tree(final, {"a": "old a", "stale": "only in the old one"})
    with atomic_path(final, directory=True) as tmp:
        write_tree(tmp, {"a": "new a"})
    assert tree(final) == {"a": "new a"} and hidden(tmp_path) == []


def test_a_directory_replace_whose_rename_fails_restores_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / "last.ckpt"
    final.mkdir()
    write_tree(final, {"__0_0.distcp": "old shard"})
    fail_renames_of_temporaries(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        with atomic_path(final, directory=True) as tmp:
            write_tree(tmp, {"__0_0.distcp": "new shard"})
    assert tree(final) == {"__0_0.distcp": "old shard"}
    assert hidden(tmp_path) == []  # neither the new temporary nor the moved-aside old copy is left


def test_a_directory_may_replace_a_file_and_a_file_a_directory(tmp_path):
    final = tmp_path / "last.ckpt"  # a single-file checkpoint, then a sharded one, then a file again
    final.write_text("file")
    with atomic_path(final, directory=True) as tmp:
        write_tree(tmp, {"shard": "dir"})
    assert tree(final) == {"shard": "dir"}
    with atomic_path(final) as tmp:
        tmp.write_text("file again")
    assert final.read_text() == "file again" and hidden(tmp_path) == []


def test_refuse_never_replaces_but_takes_the_place_of_an_empty_directory(tmp_path):
    taken, empty = tmp_path / "taken", tmp_path / "empty"
    taken.mkdir()
    (taken / "precious.txt").write_text("keep me")
    empty.mkdir()
    with pytest.raises(FileExistsError):
        with atomic_path(taken, directory=True, if_exists="refuse") as tmp:
            write_tree(tmp, {"a": "new"})
    assert tree(taken) == {"precious.txt": "keep me"}
    with atomic_path(empty, directory=True, if_exists="refuse") as tmp:
        write_tree(tmp, {"a": "new"})
    assert tree(empty) == {"a": "new"} and hidden(tmp_path) == []


def test_keep_leaves_an_artifact_published_meanwhile_alone(tmp_path):
    final = tmp_path / "cache.pt"
    with atomic_path(final, if_exists="keep") as tmp:
        tmp.write_text("ours")
        final.write_text("theirs")  # another process published first
    assert final.read_text() == "theirs" and hidden(tmp_path) == []


def test_published_artifacts_get_the_modes_of_other_outputs(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out", directory=True) as tmp:
            (tmp / "weights").write_text("x")
            (tmp / "weights").chmod(0o600)  # what safetensors does
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "weights").stat().st_mode & 0o777 == 0o644


def test_resume_removes_what_killed_file_and_directory_saves_left(tmp_path):
    from vistok.training.checkpointing import remove_partial_saves

    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "last.ckpt").write_text("complete")
    (stage / f".last.ckpt{PARTIAL_TAG}12-ab").write_text("half a file")
    (stage / f".step2.ckpt{PARTIAL_TAG}12-cd").mkdir()  # half a sharded save
    (stage / f".step2.ckpt{PARTIAL_TAG}12-cd" / "__0_0.distcp").write_text("shard")
    assert len(remove_partial_saves(stage)) == 2
    assert [p.name for p in stage.iterdir()] == ["last.ckpt"]


# ---- cache ------------------------------------------------------------------------------------------------


def test_the_cache_key_changes_with_any_parameter_and_not_with_their_order():
    params = {"num_train": 30, "seed": 1, "mark_contrast": 0.5}
    assert cache_key(params) == cache_key(dict(reversed(params.items())))
    assert len(cache_key(params)) == 12
    keys = {cache_key({**params, name: value}) for name, value in
            [("seed", 1), ("seed", 2), ("num_train", 31), ("mark_contrast", 0.25), ("resolution", 32)]}
    assert len(keys) == 5  # the first is the unchanged params


def test_cached_builds_once_and_then_reuses(tmp_path):
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        tmp.write_text("built")

    first = cached(tmp_path, "judge-", {"seed": 0}, build, suffix=".pt")
    assert first.name == f"judge-{cache_key({'seed': 0})}.pt" and first.read_text() == "built"
    assert cached(tmp_path, "judge-", {"seed": 0}, build, suffix=".pt") == first and len(calls) == 1
    assert cached(tmp_path, "judge-", {"seed": 1}, build, suffix=".pt") != first and len(calls) == 2
    assert hidden(tmp_path) == []


def test_a_failed_build_leaves_nothing_and_the_next_call_builds_again(tmp_path):
    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cached(tmp_path, "data-", {"seed": 0}, broken, directory=True)
    assert list(tmp_path.iterdir()) == []
    out = cached(tmp_path, "data-", {"seed": 0}, lambda tmp: write_tree(tmp, {"ok": "1"}), directory=True)
    assert tree(out) == {"ok": "1"}


@pytest.mark.parametrize("directory", [True, False], ids=["directory", "file"])
def test_two_builders_racing_for_one_key_end_with_one_complete_artifact(tmp_path, monkeypatch, directory):
    both_publishing = threading.Barrier(2, timeout=30)
    rename_into_place = vistok.atomic._rename_into_place

    def rename_together(*args, **kwargs) -> None:
        both_publishing.wait()  # each found nothing published, built, and now renames at the same moment
        rename_into_place(*args, **kwargs)

    monkeypatch.setattr(vistok.atomic, "_rename_into_place", rename_together)
    results, errors = {}, []

    def build_as(who: str):
        def build(tmp: Path) -> None:
            if directory:
                write_tree(tmp, {f"part{i}": who for i in range(5)})
            else:
                tmp.write_text(who * 5)
        return build

    def run(who: str) -> None:
        try:
            results[who] = cached(tmp_path, "shapes-", {"seed": 3}, build_as(who), directory=directory)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(who,)) for who in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and results["a"] == results["b"]
    final = results["a"]
    contents = set(tree(final).values()) if directory else {final.read_text()[0]}
    assert len(contents) == 1 and contents <= {"a", "b"}  # one builder's artifact, whole
    if directory:
        assert len(tree(final)) == 5
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # the loser's copy is gone


def test_cached_at_reuses_replaces_earlier_builds_and_refuses_foreign_directories(tmp_path):
    final, calls = tmp_path / "llm", []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        write_tree(tmp, {"weights": str(len(calls))})

    cached_at(final, {"seed": 0}, build, marker="stamp.json")
    assert json.loads((final / "stamp.json").read_text()) == {"seed": 0}
    cached_at(final, {"seed": 0}, build, marker="stamp.json")
    assert len(calls) == 1 and (final / "weights").read_text() == "1"
    cached_at(final, {"seed": 1}, build, marker="stamp.json")  # other parameters: rebuilt in place
    assert len(calls) == 2 and (final / "weights").read_text() == "2"
    (final / "stamp.json").write_text("{truncated")  # unreadable marker: simply rebuilt
    cached_at(final, {"seed": 1}, build, marker="stamp.json")
    assert len(calls) == 3 and hidden(tmp_path) == []

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        cached_at(foreign, {"seed": 0}, build, marker="stamp.json")
    assert len(calls) == 3 and tree(foreign) == {"precious.txt": "keep me"}


def test_write_text_replaces_an_earlier_file_but_never_a_directory_or_a_link(tmp_path):
    from vistok.atomic import write_text

    report = tmp_path / "out" / "eval.json"
    assert write_text(report, "one") == report and report.read_text() == "one"
    write_text(report, "two")
    assert report.read_text() == "two" and sorted(p.name for p in report.parent.iterdir()) == ["eval.json"]
    folder = tmp_path / "folder.json"
    folder.mkdir()
    (folder / "keep").write_text("mine")
    target = tmp_path / "target"
    target.write_text("theirs")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    for existing in (folder, link):
        with pytest.raises(FileExistsError, match="not a file"):
            write_text(existing, "three")
    assert (folder / "keep").read_text() == "mine" and target.read_text() == "theirs" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.json", "link.json", "out", "target"]
