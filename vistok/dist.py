"""Rank helpers that decide at *call* time whether a process group exists.

Model code may call these; they are no-ops in a single process. Lightning creates the process group
inside `trainer.fit`, after Hydra has built the model, so nothing here may be cached at import or
construction time.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over ranks (in place where distributed); returns it unchanged otherwise."""
    if not is_distributed():
        return tensor
    torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    tensor /= torch_dist.get_world_size()
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over ranks (in place where distributed)."""
    if is_distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor
