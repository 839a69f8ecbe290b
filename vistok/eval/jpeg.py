"""A baseline codec for bytes-per-image comparisons: Pillow's JPEG (ships with Pillow, nothing to download)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from vistok.eval.recon import psnr_per_image, to_unit


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) in [-1, 1] -> (decoded images in [-1, 1], (B,) file sizes in bytes), 4:2:0, optimised tables."""
    pixels = (to_unit(images).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    decoded, sizes = [], []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality, optimize=True)
        sizes.append(buffer.tell())
        buffer.seek(0)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return out.to(images.device), torch.tensor(sizes, dtype=torch.float64)


def jpeg_points(images: torch.Tensor, qualities: tuple[int, ...] = (1, 10, 50)) -> dict[str, float]:
    """Mean bytes and PSNR per JPEG quality: {"jpeg_bytes@q<q>": ..., "jpeg_psnr@q<q>": ...}."""
    metrics = {}
    for q in qualities:
        decoded, sizes = jpeg_roundtrip(images, q)
        metrics[f"jpeg_bytes@q{q}"] = float(sizes.mean())
        metrics[f"jpeg_psnr@q{q}"] = float(psnr_per_image(images, decoded).mean())
    return metrics


def token_bytes(num_tokens: int, codebook_size: int) -> float:
    """Bytes for k tokens of a K-code codebook at a fixed-length code: k * log2(K) / 8."""
    return num_tokens * math.log2(codebook_size) / 8
