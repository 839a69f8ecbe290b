"""Lookup-free quantization (sign of each of log2(K) channels) behind `Quantizer`."""

from __future__ import annotations

import math

import torch
from vector_quantize_pytorch import LFQ

from vistok.tokenizers.quantizers.base import Quantizer, QuantizerOutput
from vistok.tokenizers.quantizers.binary import unpack_bits


class LookupFreeQuantizer(Quantizer):
    """LFQ (MAGVIT-v2); `spherical=True` gives BSQ. Losses: "entropy" (spreads code usage) and "commit".

    The entropy loss compares every token with all K codes, (B * N, K) per step, so keep K small
    (up to about 2^16); the binary quantizer (`quantizers.binary`) has no such limit.

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
            entropy_loss_weight=1.0,  # unweighted here; the training config weights "entropy" and "commit"
            commitment_loss_weight=1.0,
        )
        self.bits = int(math.log2(codebook_size))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        # quantized (B, N, D), indices (B, N); the breakdown names the two terms of the aux loss
        out, parts = self.lfq(z, return_loss_breakdown=True)
        entropy = parts.per_sample_entropy - self.lfq.diversity_gamma * parts.batch_entropy
        return QuantizerOutput(quantized=out.quantized, indices=out.indices.long(),
                               losses={"entropy": entropy, "commit": parts.commitment})

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.lfq.indices_to_codes(indices)

    def unpack(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) ids -> (B, N, log2 K) bits in {0, 1}, most significant first (LFQ's order)."""
        return unpack_bits(indices.unsqueeze(-1), self.bits, self.bits)
