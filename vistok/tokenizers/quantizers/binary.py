"""Bernoulli binary quantization (Instella-T2I's 1D-BIT, arXiv 2506.21022): each token is K bits.

Per token: logits z = W h (K of them) and p = sigmoid(z). Training samples b ~ Bernoulli(sigmoid(z / tau));
eval thresholds b = 1[p > 0.5]. Straight-through, b + p - sg(p), so gradients reach the encoder through p.
The embedding is b C with a learned C (K, D): every token is a sum of a subset of K learned vectors.
`mean(p (1 - p))` pushes p towards 0 or 1, which closes the gap between sampled and thresholded bits.

`penalty_temperature` t computes that penalty on sigmoid(z / t) instead (t = 1 is the paper's). With t = tau
it is the variance of the sampled bits themselves, and it is satisfied once |z| is a few tau. At t = 1 it
keeps pushing |z| towards ~10, where sigmoid'(z), and with it the straight-through gradient, vanishes: at
mini scale (Adam, a decoder that ignores its input for its first few hundred steps) that froze every bit at
one constant value within ~50 steps, for any penalty weight down to 0.001 (an earlier mini-scale
measurement; the README's 1-D binary section has the runs that followed).

Bits are packed into int64 ids, most significant bit first (as vector-quantize-pytorch's LFQ does), at
most `index_bits` bits per id: a 64-bit token cannot be one non-negative int64 id, and per-id statistics
(usage, histograms) need an id space that fits in memory. So a token is (N, C) ids, C = ceil(K / index_bits).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vistok.tokenizers.quantizers.base import Quantizer, QuantizerOutput


def pack_bits(bits: torch.Tensor, index_bits: int) -> torch.Tensor:
    """(..., K) {0, 1} -> (..., ceil(K / index_bits)) int64 ids, most significant bit first in each id."""
    ids = []
    for chunk in bits.long().split(index_bits, dim=-1):
        weights = 2 ** torch.arange(chunk.shape[-1] - 1, -1, -1, device=bits.device)  # (k,) MSB first
        ids.append((chunk * weights).sum(-1))
    return torch.stack(ids, dim=-1)


def unpack_bits(ids: torch.Tensor, bits: int, index_bits: int) -> torch.Tensor:
    """Inverse of `pack_bits`: (..., C) int ids -> (..., bits) int64 in {0, 1}."""
    sizes = [min(index_bits, bits - start) for start in range(0, bits, index_bits)]
    if ids.shape[-1] != len(sizes):
        raise ValueError(f"{bits} bits at {index_bits} per id are {len(sizes)} ids per token, got {ids.shape[-1]}")
    chunks = []
    for c, size in enumerate(sizes):
        shifts = torch.arange(size - 1, -1, -1, device=ids.device)  # (size,) MSB first
        chunks.append((ids[..., c : c + 1].long() >> shifts) & 1)
    return torch.cat(chunks, dim=-1)


class BinaryQuantizer(Quantizer):
    """K Bernoulli bits per token, straight-through, embedded by a learned (K, D) matrix.

    Args:
        dim: input and embedding size D.
        bits: K, bits per token.
        tau: sampling temperature in training, b ~ Bernoulli(sigmoid(z / tau)) (Instella: 0.1).
        index_bits: at most this many bits per packed id (see the module docstring).
        penalty_temperature: the penalty is mean(q (1 - q)) with q = sigmoid(z / penalty_temperature).

    Indices are (B, N) when K <= index_bits, else (B, N, C). `codebook_size` = 2^min(K, index_bits), the
    id space of one id. Losses: {"code": the penalty} whenever gradients flow into the logits, else none.
    """

    stochastic = True  # training mode samples bits: the train/eval gap is a meaningful metric

    def __init__(self, dim: int, bits: int, tau: float = 0.1, index_bits: int = 16,
                 penalty_temperature: float = 1.0):
        super().__init__()
        if bits < 1 or not 1 <= index_bits <= 62:
            raise ValueError(f"need bits >= 1 and 1 <= index_bits <= 62, got bits={bits}, index_bits={index_bits}")
        if tau <= 0 or penalty_temperature <= 0:
            raise ValueError(f"tau and penalty_temperature must be positive, got {tau}, {penalty_temperature}")
        self.dim, self.bits, self.tau, self.index_bits = dim, bits, tau, index_bits
        self.penalty_temperature = penalty_temperature
        self.codebook_size = 2 ** min(bits, index_bits)
        self.streams = math.ceil(bits / index_bits)
        self.to_logits = nn.Linear(dim, bits)
        self.codes = nn.Parameter(torch.randn(bits, dim) / math.sqrt(bits))  # C (K, D)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        logits = self.to_logits(z)  # (B, N, K)
        probs = torch.sigmoid(logits)
        if self.training:
            bits = torch.bernoulli(torch.sigmoid(logits / self.tau)).detach()
        else:
            bits = (logits > 0).to(logits.dtype)  # p > 0.5
        losses = {}
        if logits.requires_grad:  # training, or a frozen quantizer under a trainable encoder
            bits = bits + probs - probs.detach()  # value: bits; gradient: d p
            q = probs if self.penalty_temperature == 1.0 else torch.sigmoid(logits / self.penalty_temperature)
            losses["code"] = (q * (1 - q)).mean()
        quantized = bits @ self.codes  # (B, N, D)
        return QuantizerOutput(quantized=quantized, indices=self._ids(bits.detach()), losses=losses)

    def _ids(self, bits: torch.Tensor) -> torch.Tensor:
        ids = pack_bits(bits.round(), self.index_bits)  # (B, N, C)
        return ids[..., 0] if self.streams == 1 else ids

    def unpack(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) or (B, N, C) ids -> (B, N, K) bits in {0, 1} (int64)."""
        return unpack_bits(indices.unsqueeze(-1) if indices.dim() == 2 else indices, self.bits, self.index_bits)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Ids -> (B, N, D) = bits C; equal to `forward(...).quantized` in eval mode."""
        return self.unpack(indices).to(self.codes.dtype) @ self.codes
