"""The text-to-image sequence, shared by training and sampling.

    position:  0 .. T-1                       T .. T+N-1
    content:   [pad ... <bos> caption tokens] [visual tokens 0 .. N-1]
    predicts:  -        ...       visual 0    visual 1 .. N-1, (nothing)

The prompt is left-padded, so the output at position T-1 + j predicts visual token j in every row.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class GenerationSequence:
    """Inputs of one text-to-image forward.

    Attributes:
        inputs_embeds: (B, T + N, H) prompt embeddings then visual-token embeddings.
        attention: (B, T + N) bool, False on the prompt's left padding.
        predicts_visual: (B, T + N) bool, True at positions T-1 .. T+N-2 (their output is a visual token).
        prompt_length: T.
    """

    inputs_embeds: torch.Tensor
    attention: torch.Tensor
    predicts_visual: torch.Tensor
    prompt_length: int


def build_sequence(prompt_embeds: torch.Tensor, prompt_attention: torch.Tensor,
                   visual_embeds: torch.Tensor) -> GenerationSequence:
    """Concatenate a left-padded prompt (B, T, H) + mask (B, T) with N visual embeddings (B, N, H), N >= 0."""
    b, t, _ = prompt_embeds.shape
    n = visual_embeds.shape[1]
    embeds = torch.cat([prompt_embeds, visual_embeds.to(prompt_embeds.dtype)], dim=1)
    attention = torch.cat([prompt_attention.bool(), prompt_attention.new_ones((b, n), dtype=torch.bool)], dim=1)
    predicts = torch.zeros((b, t + n), dtype=torch.bool, device=embeds.device)
    predicts[:, t - 1 : t + n - 1] = True
    return GenerationSequence(embeds, attention, predicts, t)


def align_targets(targets: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Targets of the N visual tokens (B, N, ...) placed at the positions that predict them: (B, T + N, ...),
    zeros elsewhere (those positions are outside `predicts_visual` and never scored)."""
    b, n = targets.shape[:2]
    before = targets.new_zeros((b, prompt_length - 1, *targets.shape[2:]))
    after = targets.new_zeros((b, 1, *targets.shape[2:]))
    return torch.cat([before, targets, after], dim=1)


def drop_captions(captions: list[str], probability: float, rng: random.Random) -> list[str]:
    """Classifier-free guidance training: each caption becomes "" (the unconditional prompt) with `probability`."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"caption dropout probability must be in [0, 1], got {probability}")
    return ["" if rng.random() < probability else c for c in captions]
