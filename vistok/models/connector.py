"""Projectors from tokenizer codebook embeddings (B, N, D_code) into the LLM hidden size (B, N', H)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLPProjector(nn.Module):
    """LLaVA-style MLP: Linear -> GELU -> ... -> Linear.

    Args:
        in_dim: input feature size (codebook embedding dim).
        out_dim: output feature size (LLM hidden size).
        hidden_dim: width of the hidden layers; defaults to `out_dim`.
        depth: number of Linear layers (1 is a plain linear map; 2 is the LLaVA-1.5 projector).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        hidden_dim = hidden_dim or out_dim
        dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                layers.append(nn.GELU())
            layers.append(nn.Linear(d_in, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, N, in_dim) -> (B, N, out_dim)."""
        return self.net(x)


def pool_tokens(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Adaptive average pooling of a token sequence.

    Treats N as a sqrt(N) x sqrt(N) grid when both N and `num_tokens` are perfect squares (so pooling
    merges spatial neighbours, not raster-order runs); otherwise pools 1-D over N.

    Args:
        x: (B, N, D) tokens.
        num_tokens: N' <= N, the number of tokens to keep.

    Returns:
        (B, N', D) pooled tokens.
    """
    n = x.shape[1]
    if num_tokens > n:
        raise ValueError(f"cannot pool {n} tokens up to {num_tokens}")
    if num_tokens == n:
        return x
    side, out_side = math.isqrt(n), math.isqrt(num_tokens)
    if side * side == n and out_side * out_side == num_tokens:
        grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)  # (B, D, s, s)
        pooled = F.adaptive_avg_pool2d(grid, out_side)  # (B, D, s', s')
        return pooled.flatten(2).transpose(1, 2)
    return F.adaptive_avg_pool1d(x.transpose(1, 2), num_tokens).transpose(1, 2)


class SwiGLUProjector(nn.Module):
    """Optional token pooling followed by a SwiGLU MLP: W2(silu(W1 x) * W3 x).

    Args:
        in_dim: input feature size.
        out_dim: output feature size (LLM hidden size).
        hidden_dim: SwiGLU inner width; defaults to `out_dim`.
        pool_tokens: if set, adaptively average-pool the N input tokens down to this many first
            (fewer visual tokens means a shorter, cheaper LLM sequence).
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int | None = None, pool_tokens: int | None = None
    ):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.pool_tokens = pool_tokens
        self.w1 = nn.Linear(in_dim, hidden_dim)
        self.w3 = nn.Linear(in_dim, hidden_dim)
        self.w2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """Maps (B, N, in_dim) -> (B, N', out_dim), N' = num_tokens (a per-call budget, TokenFLEX), else
        pool_tokens, else N. The gate (W1) can pick different features at each pooled scale."""
        num_tokens = num_tokens or self.pool_tokens
        if num_tokens is not None:
            x = pool_tokens(x, num_tokens)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
