"""Find, read and consolidate Lightning checkpoints, single files and FSDP2 directories alike, without
Lightning or unpickling (every load is `weights_only=True`).

A checkpoint of an FSDP2 run is a directory (`.metadata`, one `__<rank>_0.distcp` per rank and Lightning's
`meta.pt`); `load_checkpoint` returns both kinds as one dict, and `consolidate_checkpoint` writes a directory
as one file. Kept apart from vistok/training/ (which needs Lightning) so that `scripts.export`,
`scripts.consolidate` and `load_generator` run where only torch is installed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vistok.atomic import atomic_path, only_a_file

META_FILENAME = "meta.pt"  # Lightning's name for the trainer state inside a distributed checkpoint
CONFIG_KEY = "vistok_config"  # the model-defining config subtrees, stored in every checkpoint


def is_distributed_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file()


def _read_distributed(path: Path) -> dict:
    """Model weights and optimiser states of a distributed checkpoint, as plain tensors."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(prefix="vistok-dcp-") as tmp:
        out = Path(tmp) / "consolidated.pt"
        dcp_to_torch_save(path, out)
        return torch.load(out, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path) -> dict:
    """A single checkpoint file as saved, loaded safely; tensors are memory-mapped, not read."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def trainer_state(path: str | Path) -> dict:
    """The trainer state of a distributed checkpoint (Lightning's `meta.pt`: steps, counters...), {} if none."""
    meta = Path(path) / META_FILENAME
    return read_checkpoint(meta) if meta.is_file() else {}


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as one dict ({"state_dict", "global_step", "vistok", ...}), whether it is a
    single file or an FSDP2 directory. Loaded with `weights_only=True`: nothing is unpickled."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        checkpoint = read_checkpoint(path)
    elif is_distributed_checkpoint(path):
        checkpoint = trainer_state(path)
        checkpoint["state_dict"] = _read_distributed(path)["state_dict"]  # optimiser shards are dropped
    else:
        raise ValueError(f"{path} is a directory but not a distributed checkpoint (no .metadata inside)")
    if "state_dict" not in checkpoint:
        raise ValueError(f"{path} holds no 'state_dict'; is it a Lightning checkpoint?")
    return checkpoint


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning checkpoint (file or FSDP2 directory)."""
    return load_checkpoint(path)["state_dict"]


def consolidate_checkpoint(path: str | Path, out: str | Path | None = None) -> Path:
    """Write an FSDP2 distributed checkpoint directory as one file (weights + trainer state, no optimiser).

    The file loads with `torch.load(..., weights_only=True)` and its "state_dict" loads strictly into a
    single-process `VistokModule` built from the same config. Default output: `<path>.consolidated.ckpt`.
    """
    path = Path(path)
    if not is_distributed_checkpoint(path):
        raise ValueError(f"{path} is not a distributed checkpoint directory (no .metadata inside)")
    out = Path(out) if out is not None else path.with_name(path.name + ".consolidated.ckpt")
    checkpoint = load_checkpoint(path)
    with atomic_path(out, if_exists=only_a_file) as tmp:  # `out` is the user's to name
        torch.save(checkpoint, tmp)
    return out


def locate(path: str | Path) -> tuple[Path, Path]:
    """RUN_DIR or a checkpoint inside one (a .ckpt file or an FSDP2 .ckpt directory) -> (checkpoint,
    run_dir). A run dir gives its last finished stage."""
    path = Path(path)
    if path.is_file() or is_distributed_checkpoint(path):
        run_dir = next((p for p in path.parents if (p / ".hydra" / "config.yaml").is_file()), None)
        if run_dir is None:
            raise FileNotFoundError(f"{path} is not inside a vistok run directory (no .hydra/config.yaml above it)")
        return path, run_dir
    if not (path / ".hydra" / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is neither a checkpoint nor a vistok run directory")
    stages = list(OmegaConf.load(path / ".hydra" / "config.yaml").stages or {})
    for stage in reversed(stages):
        ckpt = path / "checkpoints" / stage / "last.ckpt"
        if ckpt.is_file() or is_distributed_checkpoint(ckpt):
            return ckpt, path
    raise FileNotFoundError(f"no checkpoints/<stage>/last.ckpt in {path} (stages: {stages})")
