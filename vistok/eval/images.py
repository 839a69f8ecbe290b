"""Image grids written as PNG (no torchvision needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vistok.eval.recon import to_unit


def image_grid(rows: list[torch.Tensor], scale: int = 4, pad: int = 2) -> Image.Image:
    """rows: list of (B, 3, H, W) tensors in [-1, 1], one grid row each -> a PIL image, upscaled `scale`x."""
    cols = rows[0].shape[0]
    h, w = rows[0].shape[-2:]
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, batch in enumerate(rows):
        pixels = (to_unit(batch).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        for c in range(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = pixels[c]
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def save_grid(rows: list[torch.Tensor], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(path)
    return path
