"""The generation-direction loss: the LLM's visual head predicting the tokenizer's codes (training side).

Cross-entropy per code stream for softmax heads (vq, dual, flex); binary cross-entropy per bit for bit
heads (binary1d, Instella-T2I). Only positions that predict a visual token count: text positions are
selected out before any loss is computed, so their logits and targets cannot change the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class GenerationLoss:
    """Result of `visual_token_loss`.

    Attributes:
        loss: scalar, mean over the visual positions (and over streams / bits).
        correct: 0-dim count of right predictions (argmax id per stream, or thresholded bit).
        count: 0-dim count of predictions scored (positions x streams, or positions x bits).
    """

    loss: torch.Tensor
    correct: torch.Tensor
    count: torch.Tensor

    @property
    def accuracy(self) -> torch.Tensor:
        return self.correct.float() / self.count.clamp(min=1).float()


def visual_token_loss(logits: torch.Tensor, targets: torch.Tensor, predicts_visual: torch.Tensor) -> GenerationLoss:
    """Loss of the visual head on the positions that predict a visual token.

    Args:
        logits: (B, L, C, V) code logits, or (B, L, K) bit logits, over the whole sequence.
        targets: (B, L, C) int64 ids, or (B, L, K) float bits in {0, 1}, aligned with `logits`.
        predicts_visual: (B, L) bool, True where the output at that position predicts a visual token.

    Returns:
        GenerationLoss (loss, correct, count).
    """
    if logits.shape[:2] != predicts_visual.shape or targets.shape[:2] != predicts_visual.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
                         f"{tuple(predicts_visual.shape)} must agree on (B, L)")
    picked_logits, picked_targets = logits[predicts_visual], targets[predicts_visual]  # (P, C, V) / (P, K)
    if picked_logits.shape[0] == 0:  # e.g. a validation batch of padding rows only: nothing scored
        zero = logits.sum() * 0.0
        return GenerationLoss(zero, zero.detach().long(), zero.detach().long())
    if targets.is_floating_point():  # bits
        loss = F.binary_cross_entropy_with_logits(picked_logits.float(), picked_targets.float())
        correct = ((picked_logits > 0).float() == picked_targets).sum()
        return GenerationLoss(loss, correct, torch.tensor(picked_targets.numel(), device=logits.device))
    flat_logits = picked_logits.flatten(0, 1).float()  # (P * C, V)
    flat_targets = picked_targets.flatten()  # (P * C,)
    loss = F.cross_entropy(flat_logits, flat_targets)
    correct = (flat_logits.argmax(-1) == flat_targets).sum()
    return GenerationLoss(loss, correct, torch.tensor(flat_targets.numel(), device=logits.device))
