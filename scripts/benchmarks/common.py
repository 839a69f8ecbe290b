"""The joint module at ett_mini sizes and one real batch of the generated dataset, for the benchmarks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compose(overrides: list[str]):
    """The resolved config `train.py` would see for `overrides` (output in a temp dir, the usual cache)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    out = tempfile.mkdtemp(prefix="vistok-bench-")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[*overrides, f"hydra.run.dir={out}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.paths.cache_dir = os.environ.get("VISTOK_CACHE", str(ROOT / ".cache"))
    return cfg


def joint_module_and_batch(stage: str = "ett", overrides: list[str] | None = None):
    """(module set to `stage` of ett_mini, a training batch of data.batch_size real images + captions, cfg)."""
    from hydra.utils import instantiate

    from vistok.training.prepare import prepare_run
    from vistok.training.runner import build_module
    from vistok.training.stages import stages_from_config

    cfg = compose(["experiment=ett_mini", *(overrides or [])])
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    prepare_run(cfg, datamodule)
    module = build_module(cfg, datamodule)
    stages = {s.name: s for s in stages_from_config(cfg.stages, None, cfg.get("stage_defaults"))}
    module.set_stage(stages[stage])
    loader = datamodule.train_dataloader()
    batch = next(iter(loader))
    return module, batch, cfg
