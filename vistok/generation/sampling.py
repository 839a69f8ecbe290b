"""Drawing visual tokens from the visual head's logits: temperature, top-k, top-p and classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingOptions:
    """How visual tokens are drawn.

    Attributes:
        temperature: logits are divided by it; 0 = greedy (argmax id, or thresholded bit).
        top_k: keep the k most likely ids per stream (softmax heads only); None = all.
        top_p: keep the smallest set of ids whose probability reaches p (softmax heads only); None = all.
        guidance_scale: classifier-free guidance s: logits = uncond + s (cond - uncond), where the
            unconditional branch reads the empty caption; 1 = no guidance (the unconditional pass is skipped).
        seed: seed of the sampling generator (same seed, same images).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (or None), got {self.top_p}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + s (cond - uncond). -inf entries (ids outside a stream's
    codebook) stay -inf."""
    guided = unconditional + scale * (conditional - unconditional)
    return guided.masked_fill(torch.isinf(conditional), float("-inf"))


def filter_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """(..., V) logits with every id outside the k largest set to -inf."""
    if k is None or k >= logits.shape[-1]:
        return logits
    threshold = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """(..., V) logits keeping the most likely ids until their probability mass reaches p (at least one)."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= p  # mass before this id already reaches p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_codes(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator) -> torch.Tensor:
    """(B, C, V) code logits -> (B, C) int64 ids."""
    if options.temperature == 0:
        return logits.argmax(-1)
    scaled = filter_top_p(filter_top_k(logits.float() / options.temperature, options.top_k), options.top_p)
    probs = scaled.softmax(-1).flatten(0, -2)  # (B * C, V)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


def sample_bits(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator) -> torch.Tensor:
    """(B, K) bit logits -> (B, K) bits in {0, 1} (independent Bernoulli draws, Instella-T2I)."""
    if options.temperature == 0:
        return (logits > 0).long()
    probs = torch.sigmoid(logits.float() / options.temperature)
    return torch.bernoulli(probs, generator=generator).long()
