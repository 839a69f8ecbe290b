"""Names that stay the same across requeues: the run directory decides them, never the clock.

A requeued or resubmitted job runs the same command in the same run directory (`outputs/<name>/<run_name>`,
or `<sweep dir>/<job number>` in a sweep), so anything derived from that directory, like the wandb run
id, continues where the first attempt left off.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import DictConfig

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
_ALLOWED = re.compile(r"[^A-Za-z0-9_.-]+")  # wandb refuses / \ # ? % : in run ids
_READABLE = 48  # characters of the directory name kept in an id, before its hash


def run_id(run_dir: Path | str) -> str:
    """A wandb-safe id for `run_dir`: its last two path parts, readable, plus a hash of the full path."""
    path = Path(run_dir).resolve()
    readable = _ALLOWED.sub("-", "-".join(path.parts[-2:])).strip("-")[-_READABLE:]
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def logger_overrides(logger_cfg: DictConfig, run_dir: Path | str) -> dict:
    """Extra arguments for a logger: a wandb logger without an explicit `id` gets `run_id(run_dir)`."""
    if logger_cfg.get("_target_") == WANDB_LOGGER and not logger_cfg.get("id"):
        return {"id": run_id(run_dir)}
    return {}
