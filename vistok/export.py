"""Export directory = weights + the config that rebuilds them + meta. Loads without Lightning or Hydra's app.

    <dir>/model.safetensors   tokenizer weights (EMA where present; never the discriminator)
    <dir>/config.yaml         the resolved `tokenizer` config subtree (`_target_`s)
    <dir>/config.json         the same tree as {"tokenizer": ...}: huggingface_hub's `PyTorchModelHubMixin`
                              layout, so `vistok.hub.HubTokenizer.from_pretrained(dir or repo)` loads it too
    <dir>/meta.json           format version, step, metrics, package versions
    <dir>/README.md           model card
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


ALLOWED_PREFIX = "vistok."
HUB_CONFIG_KEY = "tokenizer"  # config.json = {"tokenizer": <tree>}: the init kwargs of vistok.hub.HubTokenizer


def check_targets(node: Any, where: str = "tokenizer") -> None:
    """Only `vistok.` classes may be built from an export's config (exports may come from strangers)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_PREFIX):
            raise ValueError(f"refusing to instantiate '{target}' at {where}: exports may only build vistok classes")
        for key, value in node.items():
            check_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]")


def build_from_config(node: Any) -> Any:
    """Instantiate a plain `_target_` tree (checked first). No Hydra: exports load with torch alone."""
    if isinstance(node, list):
        return [build_from_config(v) for v in node]
    if not isinstance(node, dict):
        return node
    kwargs = {k: build_from_config(v) for k, v in node.items() if k != "_target_"}
    if "_target_" not in node:
        return kwargs
    module_name, _, attr = node["_target_"].rpartition(".")
    return getattr(importlib.import_module(module_name), attr)(**kwargs)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as contiguous CPU tensors, ready for safetensors."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_tokenizer(tokenizer: torch.nn.Module, config: DictConfig | dict, out_dir: str | Path,
                   meta: dict | None = None) -> Path:
    """Write an export directory atomically (a crash never leaves half an export)."""
    out_dir = Path(out_dir)
    plain = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    check_targets(plain)
    state = cpu_state(tokenizer)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    save_file(state, str(tmp / "model.safetensors"))
    OmegaConf.save(OmegaConf.create(plain), tmp / "config.yaml")
    (tmp / "config.json").write_text(json.dumps({HUB_CONFIG_KEY: plain}, indent=2))
    info = {"format_version": FORMAT_VERSION, "versions": _versions(), "git_commit": _git_commit(), **(meta or {})}
    (tmp / "meta.json").write_text(json.dumps(info, indent=2, default=float))
    (tmp / "README.md").write_text(_model_card(plain, info, state))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("vistok", "torch", "vector-quantize-pytorch", "diffusers", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _git_commit() -> str | None:
    """The vistok checkout's commit, when the package runs from a git checkout."""
    import subprocess

    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _model_card(config: dict, info: dict, state: dict) -> str:
    params = sum(v.numel() for v in state.values())
    metrics = info.get("metrics") or {}
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, (int, float)))
    return (f"---\nlibrary_name: vistok\ntags: [image-tokenizer, vistok]\n---\n\n"
            f"# {info.get('experiment', 'vistok')} tokenizer\n\n"
            f"`{config.get('_target_')}`, {params / 1e6:.2f}M parameters and buffers, exported at step "
            f"{info.get('step', info.get('global_step'))}.\n\n"
            "```python\nimport vistok\ntok = vistok.load_tokenizer(\"<this directory>\")\n"
            "out = tok.encode(images)            # images (B, 3, H, W) in [-1, 1]\n"
            "recon = tok.decode(out.embeddings)\n```\n\n"
            + (f"| metric | value |\n| --- | --- |\n{rows}\n" if rows else ""))


def read_export_config(path: Path) -> dict:
    """The checked tokenizer tree of an export: config.json and/or config.yaml, which must agree."""
    found = {}
    if (path / "config.json").is_file():
        data = json.loads((path / "config.json").read_text())
        if not isinstance(data, dict) or HUB_CONFIG_KEY not in data:
            raise ValueError(f"{path / 'config.json'} has no '{HUB_CONFIG_KEY}' entry: not a vistok export")
        found["config.json"] = data[HUB_CONFIG_KEY]
    if (path / "config.yaml").is_file():
        found["config.yaml"] = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=True)
    if not found:
        raise FileNotFoundError(f"{path} is not a vistok export: config.json / config.yaml is missing")
    for config in found.values():
        check_targets(config)
    if len(found) == 2 and found["config.json"] != found["config.yaml"]:
        raise ValueError(f"{path}: config.json and config.yaml describe different tokenizers (edited by hand?)")
    return next(iter(found.values()))


def read_weights(path: Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """safetensors weights, with a clear error for a missing, truncated or corrupt file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a vistok export: {path.name} is missing")
    try:
        return load_file(str(path), device=map_location)
    except Exception as error:  # safetensors raises its own error types for truncated / corrupt files
        raise ValueError(f"{path} is unreadable (truncated or corrupt): {error}") from error


def load_tokenizer(path: str | Path, map_location: str = "cpu"):
    """Rebuild a tokenizer from an export directory; returns it in eval mode."""
    path = Path(path)
    config = read_export_config(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not a vistok export: model.safetensors is missing")
    tokenizer = build_from_config(config)
    tokenizer.load_state_dict(read_weights(weights, map_location), strict=True)
    return tokenizer.eval()
