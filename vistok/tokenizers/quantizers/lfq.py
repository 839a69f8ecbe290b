"""Lookup-free quantization (sign of each of log2(K) channels) behind `Quantizer`."""

from __future__ import annotations

import math

import torch
from vector_quantize_pytorch import LFQ

from vistok.tokenizers.quantizers.base import Quantizer, QuantizerOutput


class LookupFreeQuantizer(Quantizer):
    """LFQ (MAGVIT-v2); `spherical=True` gives BSQ. Adds an entropy loss that spreads code usage.

    Args:
        dim: input/output feature size D.
        codebook_size: a power of two K; the code has log2(K) binary channels.
        spherical: l2-normalise before binarising (binary spherical quantization).
    """

    def __init__(self, dim: int, codebook_size: int, spherical: bool = False):
        super().__init__()
        if codebook_size & (codebook_size - 1):
            raise ValueError(f"LFQ codebook_size must be a power of two, got {codebook_size}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.lfq = LFQ(
            dim=dim,
            codebook_size=codebook_size,
            spherical=spherical,
            entropy_loss_weight=1.0,  # unweighted here; the training config weights "entropy"
            commitment_loss_weight=1.0,
        )
        self.bits = int(math.log2(codebook_size))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        out = self.lfq(z)  # named tuple: quantized (B, N, D), indices (B, N), entropy_aux_loss
        return QuantizerOutput(quantized=out.quantized, indices=out.indices.long(), losses={"entropy": out.entropy_aux_loss})

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.lfq.indices_to_codes(indices)
