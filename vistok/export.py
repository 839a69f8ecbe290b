"""Export directory = weights + the config that rebuilds them + meta. Loads without Lightning or Hydra's app.

    <dir>/model.safetensors   tokenizer weights (EMA where present; never the discriminator)
    <dir>/config.yaml         the resolved `tokenizer` config subtree (`_target_`s)
    <dir>/meta.json           format version, step, metrics, package versions
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


def _check_targets(node: Any, where: str = "tokenizer") -> None:
    """Only `vistok.` classes (and a few torch building blocks) may be built from an export's config."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(("vistok.", "torch.nn.")):
            raise ValueError(f"refusing to instantiate '{target}' at {where}: exports may only build vistok classes")
        for key, value in node.items():
            _check_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_targets(value, f"{where}[{i}]")


def save_tokenizer(tokenizer: torch.nn.Module, config: DictConfig | dict, out_dir: str | Path,
                   meta: dict | None = None) -> Path:
    """Write an export directory atomically (a crash never leaves half an export)."""
    out_dir = Path(out_dir)
    plain = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    _check_targets(plain)
    state = {k: v.detach().cpu().contiguous() for k, v in tokenizer.state_dict().items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    save_file(state, str(tmp / "model.safetensors"))
    OmegaConf.save(OmegaConf.create(plain), tmp / "config.yaml")
    info = {"format_version": FORMAT_VERSION, "torch": torch.__version__, **(meta or {})}
    (tmp / "meta.json").write_text(json.dumps(info, indent=2, default=float))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_tokenizer(path: str | Path, map_location: str = "cpu"):
    """Rebuild a tokenizer from an export directory; returns it in eval mode."""
    from hydra.utils import instantiate  # instantiate only; no Hydra app is started

    path = Path(path)
    for name in ("config.yaml", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a vistok export: {name} is missing")
    config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=True)
    _check_targets(config)
    tokenizer = instantiate(config)
    tokenizer.load_state_dict(load_file(str(path / "model.safetensors"), device=map_location), strict=True)
    return tokenizer.eval()
