"""Generated images as a PNG grid, each with its caption written under it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vistok.eval.recon import to_unit


def caption_grid(images: torch.Tensor, captions: list[str], columns: int = 8, scale: int = 4,
                 wrap: int = 22) -> Image.Image:
    """(B, 3, H, W) images in [-1, 1] + B captions -> one PIL image: cells of an upscaled image over its caption."""
    if len(captions) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    pixels = (to_unit(images.float()).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    h, w = images.shape[-2] * scale, images.shape[-1] * scale
    lines = [textwrap.wrap(c, wrap) or [""] for c in captions]
    text_h = 12 * max(len(x) for x in lines) + 4
    cell_w, cell_h = max(w, 6 * wrap + 8), h + text_h
    columns = max(1, min(columns, len(captions)))
    rows = -(-len(captions) // columns)
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, text) in enumerate(zip(pixels, lines)):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        canvas.paste(Image.fromarray(image).resize((w, h), Image.NEAREST), (x + (cell_w - w) // 2, y))
        draw.multiline_text((x + 4, y + h + 2), "\n".join(text), fill="black", spacing=2)
    return canvas


def save_caption_grid(images: torch.Tensor, captions: list[str], path: str | Path, columns: int = 8) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    caption_grid(images, captions, columns).save(path)
    return path
