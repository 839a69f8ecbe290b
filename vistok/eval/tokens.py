"""Codebook statistics from a histogram of code counts."""

from __future__ import annotations

import torch


def code_histogram(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Any-shaped int tensor of code ids -> (K,) float64 counts."""
    return torch.bincount(indices.flatten().long(), minlength=codebook_size).double()


def codebook_stats(histogram: torch.Tensor) -> dict[str, float]:
    """Usage = fraction of codes used at least once; perplexity = exp(entropy of the code distribution)."""
    total = histogram.sum().clamp_min(1)
    probs = histogram / total
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {
        "codebook_usage": float((histogram > 0).double().mean()),
        "codebook_perplexity": float(entropy.exp()),
    }
