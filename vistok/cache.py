"""Artifacts built once per set of parameters and then reused: the generated dataset, the GenEval judge, the
mini-CLIP teacher, the tiny LLM.

Each is built into a hidden temporary and renamed into place (`vistok.atomic`), so whatever sits under a
final name is complete: no marker has to tell a finished build from a killed one (`cached_at`'s marker says
which parameters built an artifact, not whether it is finished). Several processes (the ranks of a run, runs
sharing a cache) may build the same artifact at once; the first to publish wins and the others drop their
copy and use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from vistok.atomic import OnExisting, atomic_path

KEY_LENGTH = 12  # hex digits of the parameters' sha256 in a cached artifact's name


def cache_key(params: dict) -> str:
    """`KEY_LENGTH` hex digits of the sha256 of `params` as JSON with sorted keys: any change to any parameter
    gives another key, and so another artifact."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def cached(cache_dir: str | Path, prefix: str, params: dict, build: Callable[[Path], None], *,
           suffix: str = "", directory: bool = False) -> Path:
    """`cache_dir/<prefix><cache_key(params)><suffix>`, built first with `build(tmp)` unless it is there.

    `build` writes the artifact to `tmp`: a file path when `directory` is False, else an empty directory.
    """
    final = Path(cache_dir) / f"{prefix}{cache_key(params)}{suffix}"
    if not final.exists():
        with atomic_path(final, directory=directory, if_exists="keep") as tmp:
            build(tmp)
    return final


def cached_at(final: str | Path, params: dict, build: Callable[[Path], None], *, marker: str) -> Path:
    """A directory artifact at a path the caller chose, whose name therefore cannot hold the key.

    `final/marker` records the `params` it was built from. A directory whose marker holds these `params` is
    reused; one whose marker holds others (an earlier build) or an empty one is replaced by a new build
    (`build(tmp)` fills an empty directory); anything else is refused with FileExistsError, untouched.
    """
    final = Path(final)
    decide = _replace_earlier_builds(marker, params)
    if final.exists() and decide(final) == "keep":
        return final
    with atomic_path(final, directory=True, if_exists=decide) as tmp:
        build(tmp)
        (tmp / marker).write_text(json.dumps(params, indent=2, sort_keys=True))
    return final


def _replace_earlier_builds(marker: str, params: dict) -> Callable[[Path], OnExisting]:
    """The `vistok.atomic` rule for what is at a chosen path: only what a build left (its marker), or
    nothing, may be replaced, so a mistyped path never deletes a user's directory."""
    wanted = json.loads(json.dumps(params))  # as the marker reads back (tuples become lists)

    def decide(existing: Path) -> OnExisting:
        stamp = existing / marker
        if existing.is_dir() and not existing.is_symlink() and stamp.is_file():
            return "keep" if _read_stamp(stamp) == wanted else "replace"
        if existing.is_dir() and not existing.is_symlink() and not any(existing.iterdir()):
            return "replace"
        raise FileExistsError(f"{existing} exists and was not built here (it holds no {marker}); refusing to "
                              "replace it")

    return decide


def _read_stamp(stamp: Path) -> object:
    """The parameters a marker records; None when it is unreadable (then the build is simply redone)."""
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
