"""The tokenizer loss: reconstruction + weighted quantizer terms (+ perceptual, + generator GAN term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.losses.gan import hinge_g_loss


class TokenizerLoss(nn.Module):
    """L_tokenizer = w_l1 * L1 + w_l2 * MSE + sum_k w_k * quantizer_k [+ w_p * LPIPS] [+ w_g * GAN_G].

    Args:
        l1_weight, l2_weight: pixel reconstruction weights.
        quantizer_weights: weight per unprefixed quantizer loss name ("commit", "quant", "entropy", ...);
            a loss the tokenizer returns without a weight here raises, so nothing is silently dropped.
        perceptual: an optional module (images, recon) -> scalar, e.g. LPIPS from local weights.
        perceptual_weight: its weight.
        gan_weight: weight of the generator hinge term once the discriminator is active.
        l2_log: optimise the mean over images of log(MSE_image) instead of the batch MSE (a per-image PSNR
            loss). Each image's gradient is divided by its own error, so a batch mixing easy and hard
            reconstructions (nested dropout: k = 1 against k = 32) is not steered by its worst images alone.
            The logged "l2" stays the plain MSE.
    """

    def __init__(self, l1_weight: float = 1.0, l2_weight: float = 0.0, quantizer_weights: dict | None = None,
                 perceptual: nn.Module | None = None, perceptual_weight: float = 1.0, gan_weight: float = 0.1,
                 l2_log: bool = False):
        super().__init__()
        self.l2_log = l2_log
        self.l1_weight, self.l2_weight = l1_weight, l2_weight
        self.quantizer_weights = dict(quantizer_weights or {})
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.gan_weight = gan_weight

    def forward(self, images: torch.Tensor, recon: torch.Tensor, aux_losses: dict[str, torch.Tensor],
                fake_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (weighted total, {name: unweighted value}) for logging."""
        terms = {"l1": F.l1_loss(recon, images), "l2": F.mse_loss(recon, images)}
        l2_objective = _mean_log_mse(images, recon) if self.l2_log else terms["l2"]
        total = self.l1_weight * terms["l1"] + self.l2_weight * l2_objective
        for name, value in aux_losses.items():
            total = total + self._weight(name) * value
            terms[name] = value
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(images, recon)
            total = total + self.perceptual_weight * terms["perceptual"]
        if fake_logits is not None:
            terms["gan_g"] = hinge_g_loss(fake_logits)
            total = total + self.gan_weight * terms["gan_g"]
        return total, {k: v.detach() for k, v in terms.items()}

    def _weight(self, prefixed_name: str) -> float:
        name = prefixed_name.split("/")[-1]
        if name not in self.quantizer_weights:
            raise KeyError(f"tokenizer loss '{prefixed_name}' has no weight: add loss.quantizer_weights.{name}")
        return float(self.quantizer_weights[name])


def _mean_log_mse(images: torch.Tensor, recon: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mean_b log(MSE_b + eps) over (B, C, H, W) images: -PSNR / (10 / ln 10) up to a constant.

    eps (about 66 dB for images in [-1, 1]) keeps a perfect reconstruction finite.
    """
    per_image = (recon.float() - images.float()).pow(2).flatten(1).mean(1)  # (B,)
    return torch.log(per_image + eps).mean()
