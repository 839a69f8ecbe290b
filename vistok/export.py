"""Export directory = weights + the config that rebuilds them + meta. Loads without Lightning or Hydra's app.

    <dir>/model.safetensors   tokenizer weights (EMA where present; never the discriminator)
    <dir>/config.yaml         the resolved `tokenizer` config subtree (`_target_`s)
    <dir>/config.json         the same tree as {"tokenizer": ...}: huggingface_hub's `PyTorchModelHubMixin`
                              layout, so `vistok.hub.HubTokenizer.from_pretrained(dir or repo)` loads it too
    <dir>/meta.json           format version, step, metrics, package versions
    <dir>/README.md           model card
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from vistok import untrusted
from vistok.atomic import atomic_path

FORMAT_VERSION = 1
# config.json = {"tokenizer": <tree>}: the init kwargs of vistok.hub.HubTokenizer
HUB_CONFIG_KEY = "tokenizer"
EXPORT_FILES = frozenset({"model.safetensors", "config.yaml", "config.json", "meta.json", "README.md"})
EXPORT_EXTRAS = frozenset({"eval"})  # scripts.evaluate writes <export>/eval by default


class ExportDestinationError(ValueError):
    """An export would have to replace or delete something that is not an export it may replace."""


def check_targets(node: Any, where: str = "tokenizer") -> None:
    """Only allow-listed vistok classes may be built from an export's config (exports come from anyone)."""
    untrusted.check_config(node, where)


def build_from_config(node: Any, **kwargs: Any) -> Any:
    """Instantiate a checked `_target_` tree (`vistok.untrusted`). No Hydra: exports load with torch alone."""
    return untrusted.build(node, **kwargs)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as contiguous CPU tensors, ready for safetensors."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_tokenizer(tokenizer: torch.nn.Module, config: DictConfig | dict, out_dir: str | Path,
                   meta: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write an export directory atomically (a crash never leaves half an export).

    `out_dir` must not exist, or be an empty directory, or (with `overwrite=True`) be a vistok export, which
    is then replaced as a whole. Anything else (a directory of other files, a file, a symlink, the current
    directory or one above it, home, the root) is refused before anything is written.
    """
    return write_directory(out_dir, export_writer(tokenizer, config, meta), is_vistok_export, overwrite)


def export_writer(tokenizer: torch.nn.Module, config: DictConfig | dict,
                  meta: dict | None = None) -> Callable[[Path], None]:
    """`write(folder)`, which fills an empty folder with the export of `tokenizer`. The config is checked and
    the weights copied now, so a refused config fails before any destination is touched."""
    plain = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    check_targets(plain)
    state = cpu_state(tokenizer)
    info = {"format_version": FORMAT_VERSION, "versions": _versions(), "git_commit": _git_commit(),
            **(meta or {})}

    def write(folder: Path) -> None:
        save_file(state, str(folder / "model.safetensors"))
        OmegaConf.save(OmegaConf.create(plain), folder / "config.yaml")
        (folder / "config.json").write_text(json.dumps({HUB_CONFIG_KEY: plain}, indent=2))
        (folder / "meta.json").write_text(json.dumps(info, indent=2, default=float))
        (folder / "README.md").write_text(_model_card(plain, info, state))

    return write


# ---- the export directory: created new, or an export replaced whole ------------------------------------


def is_vistok_export(path: Path) -> bool:
    """A directory vistok wrote with `save_tokenizer` (and perhaps evaluated into), and nothing else."""
    names = {p.name for p in path.iterdir()}
    if not {"meta.json", "model.safetensors"} <= names or not names <= EXPORT_FILES | EXPORT_EXTRAS:
        return False
    try:
        return "format_version" in json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False


def write_directory(out_dir: str | Path, write: Callable[[Path], None], is_ours: Callable[[Path], bool],
                    overwrite: bool) -> Path:
    """`write(tmp)` fills a fresh hidden directory beside `out_dir`, which then becomes `out_dir`
    (`vistok.atomic`: the temporary directory is removed on every failure).

    An existing `out_dir` that `is_ours` says is an earlier export is replaced only with `overwrite`: moved
    aside, the new one renamed in, then the old one deleted, so a crash at any point leaves at least one whole
    export on disk. Anything else is refused before `write` runs.
    """
    out_dir = Path(out_dir)
    replacing = check_destination(out_dir, is_ours, overwrite)
    with atomic_path(out_dir, directory=True, if_exists="replace" if replacing else "refuse") as tmp:
        write(tmp)
    return out_dir


def check_destination(out_dir: Path, is_ours: Callable[[Path], bool], overwrite: bool) -> bool:
    """Raise `ExportDestinationError` unless `out_dir` may become an export; True if one is replaced."""
    if out_dir.is_symlink():
        raise ExportDestinationError(f"{out_dir} is a symlink: export to a new directory instead")
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ExportDestinationError(f"{out_dir} is the current directory or one above it: export to a new "
                                     "directory instead")
    if resolved in (_home(), Path(resolved.anchor)):
        raise ExportDestinationError(f"{out_dir} is the home or root directory: export to a new directory "
                                     "instead")
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise ExportDestinationError(f"{out_dir} exists and is not a directory: nothing was written")
    if not any(out_dir.iterdir()):
        return False
    if not is_ours(out_dir):
        raise ExportDestinationError(f"{out_dir} exists and is not a vistok export: it was not touched "
                                     "(export to a new directory)")
    if not overwrite:
        raise ExportDestinationError(f"{out_dir} is an existing export: pass --overwrite (overwrite=True) to "
                                     "replace it")
    return True


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except RuntimeError:  # no HOME and no passwd entry: there is no home to protect
        return None


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
    """The checked tokenizer tree of an export: config.json and/or config.yaml, which must agree.

    Neither is resolved: an export's config is plain values (see `vistok.untrusted`)."""
    found = {}
    if (path / "config.json").is_file():
        data = json.loads((path / "config.json").read_text())
        if not isinstance(data, dict) or HUB_CONFIG_KEY not in data:
            raise ValueError(f"{path / 'config.json'} has no '{HUB_CONFIG_KEY}' entry: not a vistok export")
        found["config.json"] = data[HUB_CONFIG_KEY]
    if (path / "config.yaml").is_file():
        found["config.yaml"] = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=False)
    if not found:
        raise FileNotFoundError(f"{path} is not a vistok export: config.json / config.yaml is missing")
    for name, config in found.items():
        check_targets(config, f"{path / name}: tokenizer")
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
    """Rebuild a tokenizer from an export directory; returns it in eval mode.

    The config is checked and its sizes compared with the weights file's header before anything is built."""
    path = Path(path)
    config = read_export_config(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not a vistok export: model.safetensors is missing")
    tokenizer = untrusted.build(config, str(path), expected=untrusted.weight_shapes(weights))
    tokenizer.load_state_dict(read_weights(weights, map_location), strict=True)
    return tokenizer.eval()
