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


def logger_overrides(logger_cfg: DictConfig, run_dir: Path | str, run_cfg: DictConfig | None = None) -> dict:
    """Extra arguments for a logger. A wandb logger gets `run_id(run_dir)` unless it sets an `id`, and, given
    the run's config, the name, group and tags it leaves unset (`wandb_fields`)."""
    if logger_cfg.get("_target_") != WANDB_LOGGER:
        return {}
    extra = {} if logger_cfg.get("id") else {"id": run_id(run_dir)}
    if run_cfg is not None:
        extra.update({k: v for k, v in wandb_fields(run_cfg).items() if not logger_cfg.get(k)})
    return extra


def log_run_config(loggers: list, cfg: DictConfig) -> None:
    """The whole resolved config, flattened, with the command's overrides: wandb's run config, the CSV
    logger's hparams.yaml. A sweep's runs can then be filtered and grouped by any key."""
    config = {**flat_config(cfg), "overrides": command_overrides()}
    for logger in loggers:
        logger.log_hyperparams(config)


# Overrides that say where a run lives, not what it is: left out of its display name.
_PLACEMENT = ("experiment", "run_name", "hydra.", "paths.", "num_threads", "hydra/")
_NAME_LIMIT = 128  # wandb shows names in narrow columns; the full overrides are in the config


def command_overrides() -> list[str]:
    """The command line's overrides (`key=value`), or [] outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def _is_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def display_name(cfg: DictConfig, overrides: list[str]) -> str:
    """`<experiment> <the overrides that set this run apart>`, or `<experiment>/<run_name>` when the user
    named the run: a sweep's runs differ in the W&B UI by what differs between them."""
    if any(o.split("=", 1)[0].lstrip("+~") == "run_name" for o in overrides):
        return f"{cfg.name}/{cfg.run_name}"[:_NAME_LIMIT]
    distinct = [o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(_PLACEMENT)]
    return " ".join([str(cfg.name), *distinct])[:_NAME_LIMIT]


def flat_config(cfg: DictConfig) -> dict:
    """The resolved run config as one level of dotted keys (`stages.ett.lr.llm`), which W&B filters and
    groups by; lists stay values."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    flat: dict = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk({k: v for k, v in tree.items() if k != "hydra"}, "")
    return flat


def wandb_fields(cfg: DictConfig) -> dict:
    """name, group (the experiment; a sweep's runs group by sweep) and tags (experiment, stages) for a
    wandb run of `cfg`."""
    group = f"{cfg.name}/{cfg.run_name}" if _is_sweep() else str(cfg.name)
    tags = [str(cfg.name), *(str(s) for s, v in (cfg.get("stages") or {}).items() if v is not None)]
    return {"name": display_name(cfg, command_overrides()), "group": group, "tags": tags}
