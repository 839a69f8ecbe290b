"""Finite scalar quantization (implicit codebook of prod(levels) codes) behind `Quantizer`."""

from __future__ import annotations

import math

import torch
from vector_quantize_pytorch import FSQ

from vistok.tokenizers.quantizers.base import Quantizer, QuantizerOutput


class FiniteScalarQuantizer(Quantizer):
    """FSQ: each of len(levels) channels is rounded to one of levels[i] values; no codebook, no loss.

    Args:
        dim: input/output feature size D (projected to len(levels) channels and back when different).
        levels: number of values per channel, e.g. [8, 5, 5, 5] -> 1000 codes.
    """

    def __init__(self, dim: int, levels: list[int]):
        super().__init__()
        self.dim = dim
        self.levels = list(levels)
        self.codebook_size = math.prod(self.levels)
        self.fsq = FSQ(levels=self.levels, dim=dim)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        quantized, indices = self.fsq(z)  # (B, N, D), (B, N)
        return QuantizerOutput(quantized=quantized, indices=indices.long(), losses={})

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_codes(indices)
