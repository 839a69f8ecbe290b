"""Shared fixtures: everything offline, caches in a per-session temp dir, configs composed like train.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: a worker per core, at most 4 (many tests start two-process training runs of their own)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def pytest_collection_modifyitems(config, items) -> None:
    """The slurm tier first: its tests spend minutes waiting on the cluster, which the other workers fill."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)  # stable: otherwise file order


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache (generated shards, tiny LLM) shared by the whole session, like a user's .cache/."""
    path = tmp_path_factory.mktemp("vistok-cache")
    os.environ["VISTOK_CACHE"] = str(path)
    return path


def run_train(args: list[str], run_dir: Path, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` as a user would, in its own process."""
    env = {**os.environ, "VISTOK_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def train_tiny(args: list[str], run_dir: Path, cache: Path, metrics: tuple[str, ...] = ()) -> dict:
    """`run_train` that must succeed and leave `metrics` in metrics.json's final numbers; and whose exported
    tokenizer reloads with lookup(ids) == embeddings on 32 px images. Returns the final numbers."""
    import json

    import torch

    from vistok import load_tokenizer

    result = run_train(args, run_dir, cache)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert not [key for key in metrics if key not in final], sorted(final)
    loaded = load_tokenizer(run_dir / "tokenizer")
    with torch.no_grad():
        out = loaded.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
        assert torch.equal(loaded.lookup(out.indices), out.embeddings)
    return final


@pytest.fixture
def compose_cfg(cache_dir, tmp_path):
    """compose_cfg(overrides) -> the resolved config train.py would see (output dir = tmp_path)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={tmp_path}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.cache_dir = str(cache_dir)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def write_lpips_weights(folder: Path) -> tuple[Path, Path]:
    """LPIPS's two weight files in their published layouts (random values): VGG16 features and the heads."""
    import torch

    from vistok.losses.perceptual import _CHANNELS, _vgg_features

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in _vgg_features().state_dict().items()}, folder / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(_CHANNELS)},
               folder / "lpips_vgg.pth")
    return folder / "vgg16.pth", folder / "lpips_vgg.pth"
