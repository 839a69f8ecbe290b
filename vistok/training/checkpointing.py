"""Checkpoints that survive faults.

- Writes are atomic (`vistok.atomic`): a checkpoint is written to a hidden partial file beside its final
  name, flushed to disk, then renamed over it, so a kill during a save leaves the previous checkpoint intact
  and never a truncated one under a name resume would pick.
- A checkpoint holding NaN/inf weights is refused rather than written over a good one.
- Resume picks the newest checkpoint of a stage that loads, and first checks that it fits the model
  built from the current config (naming the config keys and tensors that differ instead of a shape dump).
- Loads never unpickle arbitrary objects (`weights_only=True`).
- The random-number state travels in the checkpoint, so a resumed stage continues the same random
  stream (dead-code restarts, sampling) as an uninterrupted one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from vistok.atomic import PARTIAL_TAG, atomic_path, remove
from vistok.checkpoint_files import (
    CONFIG_KEY,
    is_distributed_checkpoint,
    load_checkpoint,
    read_checkpoint,
    trainer_state,
)

COUNTERS_KEY = "vistok_counters"
MODEL_CONFIG_GROUPS = ("tokenizer", "llm", "llm_input", "projector", "module")
_SHOWN = 5  # differing tensors listed in an error message


class NonFiniteCheckpointError(FloatingPointError):
    """A checkpoint about to be written holds NaN or inf values."""


class IncompatibleCheckpointError(ValueError):
    """A checkpoint in the run directory cannot be resumed into the model of the current config."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that only a full (code-running) unpickle could load."""


_UNSAFE_PICKLE = "Weights only load failed"  # torch's message when weights_only refuses an object


# ---- writing ------------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic local writes, finite weights only, `weights_only` loads.

    Lightning's own save goes through an fsspec transaction whose temp file lives in the system temp
    directory: when that is another filesystem the final move is a copy (a kill mid-copy leaves a
    truncated file under the real name), and every killed save leaks a full-size temp file there.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or _is_remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        check_finite(checkpoint.get("state_dict", {}), path)
        with atomic_path(path) as partial:
            torch.save(checkpoint, partial)

    def load_checkpoint(self, path, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # Never unpickle code from a checkpoint, whoever calls (Lightning passes None on some paths).
        weights_only = True if weights_only is None else weights_only
        if map_location is None:
            map_location = "cpu"
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def check_finite(state_dict: dict[str, Any], path: Path | str) -> None:
    """Raise `NonFiniteCheckpointError` naming the tensors of `state_dict` that hold NaN or inf."""
    bad = [name for name, value in state_dict.items()
           if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        shown = ", ".join(bad[:_SHOWN]) + (f" (+{len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else "")
        raise NonFiniteCheckpointError(
            f"refusing to write checkpoint {path}: non-finite values (NaN/inf) in {len(bad)} tensor(s): "
            f"{shown}. The previous checkpoints are kept; the run diverged (lower a learning rate, or look "
            "at the tensors named here).")


def _is_remote(path) -> bool:
    return "://" in str(path)


# ---- choosing the checkpoint to resume from --------------------------------------------------------


def remove_partial_saves(stage_dir: Path) -> list[Path]:
    """Delete what killed saves left behind, files and FSDP2 directories (never a complete checkpoint).
    Returns what was removed."""
    partial = list(Path(stage_dir).glob(f".*{PARTIAL_TAG}*"))
    for path in partial:
        remove(path)  # another rank may have removed it first
    return partial


def resume_checkpoint(stage_dir: Path | str) -> Path | None:
    """The checkpoint an interrupted stage resumes from: the newest `*.ckpt` in `stage_dir` that loads.

    Partial files of killed saves are removed first and never considered. A checkpoint that does not
    load (truncated, not a checkpoint) is reported and passed over in favour of the next newest; one that
    would need arbitrary unpickling stops the run. Returns None when there is nothing to resume.
    """
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return None
    remove_partial_saves(stage_dir)
    candidates = sorted((p for p in stage_dir.glob("*.ckpt") if p.is_file() or is_distributed_checkpoint(p)),
                        key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)
    for path in candidates:
        if path.is_dir():
            return path  # written complete-or-not-at-all by the sharded strategy (see training/sharding.py)
        try:
            checkpoint = read_checkpoint(path)
        except Exception as exn:
            if _UNSAFE_PICKLE in str(exn):
                # Complete, but it holds objects only a full unpickle could build: passing over it would
                # silently restart the stage, and loading it could run code. Stop and say so.
                raise UnsafeCheckpointError(
                    f"{path} holds objects that a safe (weights_only) load refuses; vistok never unpickles "
                    "arbitrary objects. Move it away to resume from an older checkpoint.") from exn
            print(f"ignoring checkpoint {path}: it does not load ({type(exn).__name__}: {_first_line(exn)})")
            continue
        if isinstance(checkpoint, dict) and "state_dict" in checkpoint and "global_step" in checkpoint:
            return path
        print(f"ignoring checkpoint {path}: not a Lightning training checkpoint")
    return None


def checked_resume_checkpoint(module, stage_dir: Path | str,
                              config: dict[str, Any] | None = None) -> Path | None:
    """`resume_checkpoint(stage_dir)`, checked to fit `module` (built, its stage set); None = start fresh."""
    path = resume_checkpoint(stage_dir)
    if path is None:
        return None
    if path.is_dir():  # sharded: its tensors are only readable by consolidating, so Lightning checks them
        checkpoint = trainer_state(path)
        print(f"resuming stage '{Path(stage_dir).name}' from the distributed checkpoint {path} at step "
              f"{checkpoint.get('vistok', {}).get('stage_step', '?')} of the stage (global step "
              f"{checkpoint.get('global_step', '?')})")
        return path
    checkpoint = read_checkpoint(path)
    check_resumable(module, checkpoint, path, config, optimizer_group_names(module))
    stage = checkpoint.get("vistok", {})
    print(f"resuming stage '{stage.get('stage', Path(stage_dir).name)}' from {path} at step "
          f"{stage.get('stage_step', '?')} of the stage (global step {checkpoint['global_step']})")
    return path


def _first_line(exn: Exception) -> str:
    text = str(exn).strip()
    return text.splitlines()[0][:200] if text else ""


# ---- compatibility --------------------------------------------------------------------------------


def model_config(cfg) -> dict[str, Any]:
    """The resolved config subtrees that define the model's tensors (stored in every checkpoint)."""
    from omegaconf import OmegaConf

    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg.get(key))
            else cfg.get(key) for key in MODEL_CONFIG_GROUPS}


def check_resumable(module: torch.nn.Module, checkpoint: dict[str, Any], path: Path | str,
                    config: dict[str, Any] | None = None, trained_groups: list[str] | None = None) -> None:
    """Raise `IncompatibleCheckpointError` if `checkpoint` cannot be loaded into `module`.

    Args:
        module: the model built from the current config.
        checkpoint: a loaded Lightning checkpoint (see `read_checkpoint`).
        path: where it came from (for the message).
        config: `model_config` of the current run; config keys that differ from the checkpoint's are named.
        trained_groups: the optimiser groups the current stage trains; a checkpoint whose optimiser was
            built for other groups cannot restore its optimiser state.
    """
    problems = _tensor_problems(checkpoint["state_dict"], module.state_dict())
    if trained_groups is not None:
        saved_groups = _optimizer_groups(checkpoint)
        if saved_groups is not None and saved_groups != list(trained_groups):
            problems.append(f"the stage trains module groups {list(trained_groups)}, the checkpoint's "
                            f"optimiser was built for {saved_groups}")
    if not problems:
        return
    differing = config_differences(checkpoint.get(CONFIG_KEY), config) if config is not None else []
    lines = [f"cannot resume from {path}: it was written by a run with a different model or stage config."]
    if differing:
        lines.append("config keys that differ (checkpoint -> now): " + "; ".join(differing))
    lines.extend(problems)
    lines.append("Rerun with the config the checkpoint was written with, or start a new run directory "
                 f"(hydra.run.dir=...) and take the tensors that still fit with init_from={path}.")
    raise IncompatibleCheckpointError("\n  ".join(lines))


def _tensor_problems(saved: dict[str, Any], own: dict[str, torch.Tensor]) -> list[str]:
    shapes = [f"{k} {tuple(saved[k].shape)} -> {tuple(own[k].shape)}"
              for k in saved.keys() & own.keys() if tuple(saved[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, names in (("tensors whose shape differs (checkpoint -> now)", sorted(shapes)),
                         ("tensors only in the checkpoint", sorted(saved.keys() - own.keys())),
                         ("tensors only in the current model", sorted(own.keys() - saved.keys()))):
        if names:
            more = f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
            problems.append(f"{label}: " + "; ".join(names[:_SHOWN]) + more)
    return problems


def optimizer_group_names(module) -> list[str]:
    """Names of the main optimiser's parameter groups the module builds for its current stage."""
    optimizers, _ = module.configure_optimizers()
    return [group.get("name", "?") for group in optimizers[0].param_groups]


def _optimizer_groups(checkpoint: dict[str, Any]) -> list[str] | None:
    """Names of the main optimiser's parameter groups in a checkpoint (None if it has none)."""
    states = checkpoint.get("optimizer_states") or []
    if not states:
        return None
    return [group.get("name", "?") for group in states[0].get("param_groups", [])]


def config_differences(saved: dict | None, now: dict | None, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two nested config dicts."""
    if saved is None or now is None:
        return []
    found = []
    for key in sorted(set(saved) | set(now), key=str):
        old, new = saved.get(key, "<absent>"), now.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            found.extend(config_differences(old, new, name + "."))
        elif old != new:
            found.append(f"{name}: {old!r} -> {new!r}")
    return found


def load_finished_stage(module: torch.nn.Module, stage_dir: Path,
                        config: dict[str, Any] | None = None) -> Path:
    """Load the final weights of a finished stage (its `last.ckpt`, a file or an FSDP2 directory) into
    `module` (unsharded), checked first."""
    path = Path(stage_dir) / "last.ckpt"
    if not (path.is_file() or is_distributed_checkpoint(path)):
        raise FileNotFoundError(f"{stage_dir} is marked done but has no last.ckpt; delete its 'done' marker "
                                "to train the stage again")
    checkpoint = load_checkpoint(path)
    check_resumable(module, checkpoint, path, config)
    module.load_state_dict(checkpoint["state_dict"])
    restore_counters(module, checkpoint)
    return path


def restore_counters(module, checkpoint: dict[str, Any]) -> None:
    for name, value in checkpoint.get(COUNTERS_KEY, {}).items():
        if name in COUNTERS:
            setattr(module, name, int(value))


# ---- state that Lightning does not checkpoint -----------------------------------------------------


COUNTERS = ("skipped_samples", "nan_skips", "captions_truncated")  # run totals kept outside the state_dict


class ResumeState(Callback):
    """Stores in every checkpoint what Lightning leaves out, and restores it on resume.

    - the model config (`CONFIG_KEY`), so an incompatible resume can name the keys that differ;
    - the module's run counters (corrupt samples and NaN batches skipped so far);
    - the random-number state, put back just before the first training batch after a resume, so the
      draws Lightning makes while setting up (a DataLoader's base seed) do not shift it.
    """

    def __init__(self, config: dict[str, Any] | None = None):
        self.config = config
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.config is not None:
            checkpoint[CONFIG_KEY] = self.config
        checkpoint[COUNTERS_KEY] = {name: int(getattr(pl_module, name, 0)) for name in COUNTERS}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        restore_counters(pl_module, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None

    def on_train_end(self, trainer, pl_module) -> None:
        # A stage resumed at its last step draws no batch: its saved random state still comes back, so the
        # checkpoint written after fit and the validation equal an uninterrupted run's.
        self.on_train_batch_start(trainer, pl_module, None, 0)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states, as types a `weights_only` load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants the nested tuples it produced (a round trip may give lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class RollbackSkippedBatch(Callback):
    """With `nan_policy=skip`, undo the buffer updates of a batch whose loss was not finite.

    The tokenizer's forward updates buffers before the loss exists (EMA codebooks, their cluster sizes,
    normalisation statistics), so a batch that is skipped for a NaN loss has already written NaN into
    them; every later batch would then be NaN too. Buffers are snapshotted before each batch and put
    back when the module counted a skip. Parameters and optimiser state are untouched by a skipped batch.
    """

    def __init__(self):
        self._snapshot: dict[str, torch.Tensor] = {}
        self._skips_before = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if getattr(pl_module, "nan_policy", "raise") != "skip":
            return
        self._skips_before = pl_module.nan_skips
        self._snapshot = {name: buffer.detach().clone() for name, buffer in pl_module.named_buffers()
                          if buffer.is_floating_point()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._snapshot or pl_module.nan_skips == self._skips_before:
            return
        buffers = dict(pl_module.named_buffers())
        with torch.no_grad():
            for name, saved in self._snapshot.items():
                buffers[name].copy_(saved)
        self._snapshot = {}
