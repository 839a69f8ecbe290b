"""Catch state that drifts apart across ranks: buffers (codebooks, EMA statistics, usage counters).

Data-parallel strategies keep parameters in step by construction (DDP all-reduces gradients, FSDP2
shards them), but buffers are each rank's own copy: a quantizer that updates its codebook from local
statistics without an all-reduce drifts silently, and each rank then encodes the same image differently.
`ReplicaCheck` compares every buffer across ranks before each validation pass and at the end of training,
and stops the run naming the buffers that differ.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from lightning.pytorch.callbacks import Callback
from torch import nn

from vistok import dist


def buffer_fingerprints(module: nn.Module) -> tuple[list[str], torch.Tensor]:
    """(names, (num_buffers, 3) float64 [sum, sum of squares, position-weighted sum]) of every buffer.

    The position weights make a permutation of a codebook's rows count as a difference.
    """
    names, rows = [], []
    for name, buffer in module.named_buffers():
        values = buffer.detach().flatten().double()
        weights = torch.arange(1, values.numel() + 1, dtype=torch.float64, device=values.device)
        rows.append(torch.stack([values.sum(), values.square().sum(), (values * weights).sum()]).cpu())
        names.append(name)
    return names, torch.stack(rows) if rows else torch.zeros(0, 3, dtype=torch.float64)


def mismatched_buffers(module: nn.Module, device: torch.device, rtol: float = 1e-9) -> list[str]:
    """Names of buffers whose fingerprints differ between ranks (collective: every rank must call it)."""
    names, prints = buffer_fingerprints(module)
    high, low = prints.to(device), prints.to(device).clone()
    torch_dist.all_reduce(high, op=torch_dist.ReduceOp.MAX)
    torch_dist.all_reduce(low, op=torch_dist.ReduceOp.MIN)
    spread = (high - low).abs() > rtol * high.abs().clamp_min(1.0)
    return [name for name, bad in zip(names, spread.any(dim=1).tolist()) if bad]


class ReplicaCheck(Callback):
    """Raise (or warn, `on_mismatch="warn"`) when any buffer differs across ranks."""

    def __init__(self, on_mismatch: str = "raise"):
        if on_mismatch not in ("raise", "warn"):
            raise ValueError(f"on_mismatch must be 'raise' or 'warn', got '{on_mismatch}'")
        self.on_mismatch = on_mismatch

    def _check(self, trainer, pl_module, when: str) -> None:
        if not dist.is_distributed() or dist.world_size() == 1:
            return
        bad = mismatched_buffers(pl_module, pl_module.device)
        if not bad:
            return
        message = (f"{len(bad)} buffers differ across the {dist.world_size()} ranks {when} (step "
                   f"{trainer.global_step}): {bad[:8]}{' ...' if len(bad) > 8 else ''}")
        if self.on_mismatch == "raise":
            raise RuntimeError(message)
        print(f"warning: {message}")

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, "before validation")

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, "at the end of training")
