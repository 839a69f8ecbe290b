"""Semantic distillation for the dual family: the semantic half of the codes, through the tokenizer's
semantic head, predicts a frozen teacher's patch features (TokenFlow 2.2: cosine; DualToken 3.2: MSE - cos,
per position and on the pooled features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class SemanticDistillation(nn.Module):
    """L_sem = cosine_weight * mean(1 - cos(pred, target)) + mse_weight * MSE(pred, target), per position,
    + pooled_weight * (1 - cos + MSE) of the position-averaged pred and target (DualToken's term on the
    pooled output, weight 1 in its code; there the features pass the teacher's last layer and attention-pooling
    head, here a mean over positions, since the student has no such head).

    The teacher's (B, Dt, h', w') map is area-pooled (or bilinearly resized up) to the tokenizer's grid.
    The teacher stays frozen and in eval mode whatever mode the training module switches to.

    Args:
        teacher: a frozen module, images (B, 3, H, W) in [-1, 1] -> (B, Dt, h', w').
        cosine_weight, mse_weight: weights of the two per-position terms.
        pooled_weight: weight of the pooled term (0 = off).
    """

    def __init__(self, teacher: nn.Module, cosine_weight: float = 1.0, mse_weight: float = 0.0,
                 pooled_weight: float = 0.0):
        super().__init__()
        self.teacher = teacher.requires_grad_(False).eval()
        self.cosine_weight, self.mse_weight, self.pooled_weight = cosine_weight, mse_weight, pooled_weight

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def targets(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, 3, H, W) -> (B, grid * grid, Dt) teacher features on the tokenizer's grid."""
        features = self.teacher(images).float()
        if features.shape[-1] >= grid:
            features = F.adaptive_avg_pool2d(features, grid)
        else:
            features = F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)
        return rearrange(features, "b d h w -> b (h w) d")

    def forward(self, tokenizer: nn.Module, images: torch.Tensor, out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (weighted total, unweighted terms) for a tokenizer with `predict_semantics` and `grid`."""
        target = self.targets(images, tokenizer.grid)  # (B, N, Dt)
        pred = tokenizer.predict_semantics(out.embeddings)  # (B, N, Dt)
        if pred.shape[-1] != target.shape[-1]:
            raise ValueError(f"the tokenizer's semantic head predicts {pred.shape[-1]} features but the teacher "
                             f"gives {target.shape[-1]}: set tokenizer.decoder.semantic.out_dim")
        terms = {"semantic/cosine": (1 - F.cosine_similarity(pred, target, dim=-1)).mean(),
                 "semantic/mse": F.mse_loss(pred, target)}
        total = self.cosine_weight * terms["semantic/cosine"] + self.mse_weight * terms["semantic/mse"]
        if self.pooled_weight:
            pooled, pooled_target = pred.mean(dim=1), target.mean(dim=1)  # (B, Dt) each
            terms["semantic/pooled"] = ((1 - F.cosine_similarity(pooled, pooled_target, dim=-1)).mean()
                                        + F.mse_loss(pooled, pooled_target))
            total = total + self.pooled_weight * terms["semantic/pooled"]
        return total, terms
