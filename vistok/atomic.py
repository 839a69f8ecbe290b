"""Artifacts appear whole or not at all: every file or directory vistok writes for later use (checkpoints,
exports, cached datasets and models) is written under a hidden temporary name beside its final one, flushed
to disk, then renamed into place.

A rename inside one directory is atomic, so a reader, a resumed run or another rank sees the previous
artifact or the new one, never half of one, and a kill mid-write leaves only a hidden
`.NAME.partial-PID-XXXXXXXX` that nothing reads. (A temporary in the system temp directory would not do: on
another filesystem the final move is a copy, and a kill mid-copy leaves a truncated file under the real name.)

What becomes of an artifact already at the final name is the caller's choice (`if_exists`):

- "replace" (checkpoints, an export with overwrite): a file is replaced by one rename; a directory, or
  anything a directory takes the place of, is moved aside, the new one renamed in, then the old one deleted.
  If the rename fails the old one is put back, so at least one whole artifact is on disk at every moment.
- "refuse": nothing is replaced (FileExistsError), except an empty directory, whose place a directory takes.
- "keep" (caches): another process published the same artifact first; theirs stays and ours is dropped.
- a function of the existing path that returns one of these, or raises to refuse with its own message.

Published artifacts get the modes `open`/`mkdir` give under the user's umask (some writers, safetensors for
one, make private files), so a group that reads a run directory or a shared cache reads them too.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

PARTIAL_TAG = ".partial-"  # hidden `.<name>.partial-<pid>-<random>` entries: writes in progress (or killed)
OnExisting = Literal["replace", "refuse", "keep"]
ExistingPolicy = OnExisting | Callable[[Path], OnExisting]


@contextmanager
def atomic_path(final: str | Path, *, directory: bool = False,
                if_exists: ExistingPolicy = "replace") -> Iterator[Path]:
    """Yield a hidden temporary beside `final` to write the artifact into; publish it as `final` when the
    body returns.

    Args:
        final: where the artifact ends up; its parent is created if missing.
        directory: yield an empty directory to fill; otherwise a path (not yet created) to write a file to.
        if_exists: what to do with an artifact already at `final` (see the module docstring).

    On any failure, in the body or while publishing, the temporary is removed and `final` is as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{PARTIAL_TAG}{os.getpid()}-{secrets.token_hex(4)}")
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, final, if_exists)
    finally:
        remove(tmp)  # gone already when published


def only_a_file(existing: Path) -> OnExisting:
    """The `if_exists` rule for a file at a path a user may have named: an earlier file there is replaced, a
    directory (or a link) never is."""
    if existing.is_file() and not existing.is_symlink():
        return "replace"
    raise FileExistsError(f"{existing} exists and is not a file: it was not replaced")


def write_text(final: str | Path, text: str) -> Path:
    """A small text file (a JSON report, a marker) published whole, replacing an earlier file (only a file)."""
    with atomic_path(final, if_exists=only_a_file) as tmp:
        tmp.write_text(text)
    return Path(final)


def remove(path: str | Path) -> None:
    """Delete a file, a link (never what it points to) or a directory tree; nothing if it is not there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _publish(tmp: Path, final: Path, if_exists: ExistingPolicy) -> None:
    """Make the finished temporary `tmp` durable, then rename it to `final` under the `if_exists` rule."""
    _share_like_other_outputs(tmp)
    _sync_tree(tmp)
    action = _decide(if_exists, final)
    if action == "keep":
        return
    try:
        # Nothing there now (action None): the rule itself says whether what appears meanwhile may go.
        _rename_into_place(tmp, final, replace=(action or if_exists) == "replace")
    except OSError:
        if _decide(if_exists, final) == "keep":  # another process published while we wrote
            return
        raise
    _fsync(final.parent, directory=True)  # make the rename itself durable


def _decide(if_exists: ExistingPolicy, final: Path) -> OnExisting | None:
    """The rule for what is at `final` now; None when nothing is."""
    if not os.path.lexists(final):
        return None
    return if_exists(final) if callable(if_exists) else if_exists


def _rename_into_place(tmp: Path, final: Path, replace: bool) -> None:
    """One rename when nothing is in the way; `replace` allows replacing what is (see `_swap`)."""
    if not replace:
        if os.path.lexists(final) and not _is_empty_directory(final):
            raise FileExistsError(errno.EEXIST, "refusing to replace it", str(final))
        os.rename(tmp, final)  # a directory rename also refuses a directory that has filled up since
    elif tmp.is_dir() or final.is_dir():
        _swap(tmp, final)
    else:
        os.replace(tmp, final)


def _swap(tmp: Path, final: Path) -> None:
    """Move `final` aside, rename `tmp` to it, delete the old one; put the old one back if the rename fails.
    Only the replaced artifact is ever deleted, and only once the new one is in its place."""
    aside: Path | None = final.with_name(f".{final.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(final, aside)
    except FileNotFoundError:  # another process moved it first
        aside = None
    try:
        os.rename(tmp, final)
    except BaseException:
        if aside is not None:
            os.rename(aside, final)
        raise
    if aside is not None:
        remove(aside)


def _is_empty_directory(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _sync_tree(path: Path) -> None:
    """Flush a file, or every file and directory of a tree, to disk before it is renamed into place."""
    if not path.is_dir():
        _fsync(path, directory=False)
        return
    for root, _, files in os.walk(path):
        for name in files:
            _fsync(Path(root) / name, directory=False)
        _fsync(Path(root), directory=True)


def _fsync(path: Path, directory: bool) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return  # some filesystems do not open directories; the rename is still atomic
        raise
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # cannot sync here: nothing lost
            raise
    finally:
        os.close(fd)


def _share_like_other_outputs(path: Path) -> None:
    """Give a private temporary (and all it holds) the modes `open`/`mkdir` give under the user's umask."""
    mask = _umask()
    for entry in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not entry.is_symlink():
            entry.chmod((0o777 if entry.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
