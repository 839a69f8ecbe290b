"""The quantizer plug-in point: every quantizer returns one `QuantizerOutput`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    """What a quantizer hands back to its tokenizer.

    Attributes:
        quantized: (B, N, D) values passed on to the decoder / LLM; straight-through in training,
            so gradients reach both the encoder output and (where learnable) the codebook.
        indices: (B, N) int64 code ids in [0, codebook_size).
        losses: unweighted auxiliary losses, e.g. {"commit": ..., "entropy": ...}; weights live in the
            training config, never here.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class Quantizer(nn.Module):
    """Base class. Subclasses set `codebook_size` and `dim` and implement `forward` and `lookup`.

    Contract (checked by tests/test_quantizers.py for every adapter):
        forward(z: (B, N, D)) -> QuantizerOutput
        lookup(indices: (B, N)) -> (B, N, D), and in eval mode lookup(out.indices) == out.quantized.
    """

    codebook_size: int
    dim: int
    stochastic = False  # True: training mode samples its codes (evaluation then also scores a sampled pass)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError
