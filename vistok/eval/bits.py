"""Statistics of binary tokens (K bits per token, Instella-T2I)."""

from __future__ import annotations

import torch


def binary_entropy(p_one: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy in bits of a Bernoulli(p_one); 0 at p = 0 or 1."""
    p = p_one.double().clamp(0, 1)
    terms = torch.stack([p, 1 - p])
    return -(terms * torch.log2(terms.clamp_min(1e-300))).sum(0)


def bit_entropy(p_one: torch.Tensor) -> float:
    """Mean over bits of the entropy, in bits, of each bit's frequency of ones (1.0 = fair coins, 0.0 = constant).

    Args:
        p_one: frequency of 1 per bit, any shape; each entry is one bit variable. (K,) pools every token
            position: `bit_entropy` in metrics.json, a bit's usage like codebook usage pools codes. (N, K)
            keeps token positions apart: `token_bit_entropy`, stricter, since a bit that is constant at
            each position but differs between positions carries no information about the image.
    """
    return float(binary_entropy(p_one).mean())


def bit_counts(bits: torch.Tensor) -> torch.Tensor:
    """(B, N, K) bits in {0, 1} -> (N, K) number of images in which each bit is 1 (float64)."""
    return bits.double().sum(0)
