"""Reconstruction metrics on images in [-1, 1]."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (decoders may overshoot)."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def psnr_per_image(images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) x 2 in [-1, 1] -> (B,) PSNR in dB over [0, 1] pixel values."""
    mse = (to_unit(images) - to_unit(recon)).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim_per_image(images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM (gaussian window 11, sigma 1.5; torchmetrics) over [0, 1] pixel values."""
    return structural_similarity_index_measure(to_unit(recon), to_unit(images), data_range=1.0, reduction="none")
