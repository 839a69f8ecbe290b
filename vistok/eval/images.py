"""Image grids written as PNG (no torchvision needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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


MIN_TILE = 128  # captioned images are upscaled (by a whole factor) to at least this width, so text fits
MAX_CAPTION_LINES = 8  # per caption; a longer one ends with an ellipsis
TEXT_MARGIN = 3
REFERENCE_INK, GENERATED_INK = (0, 0, 0), (20, 60, 170)


def captioned_images(images: torch.Tensor, references: list[str], generated: list[str],
                     pad: int = 2) -> Image.Image:
    """Images side by side, each with its reference caption and the generated one written under it.

    images: (B, 3, H, W) in [-1, 1]; references / generated: B captions each. Each image is upscaled by a
    whole factor to at least MIN_TILE pixels wide (nearest neighbour, pixels stay visible), captions are
    wrapped to that width in Pillow's default font, "ref:" in black and "gen:" in blue. Returns a PIL image
    (white background) that needs no JSON beside it to be read.
    """
    scale = max(1, math.ceil(MIN_TILE / images.shape[-1]))
    tile_h, tile_w = images.shape[-2] * scale, images.shape[-1] * scale
    font = ImageFont.load_default()
    line_height = _line_height(font)
    text_width = tile_w - 2 * TEXT_MARGIN
    columns = [_caption_lines(font, ref, gen, text_width) for ref, gen in zip(references, generated)]
    most_lines = max((len(lines) for lines in columns), default=0)
    text_h = most_lines * line_height + (2 * TEXT_MARGIN if columns else 0)
    picture = image_grid([images], scale=1, pad=0).resize((tile_w * len(columns), tile_h), Image.NEAREST)
    canvas = Image.new("RGB", (len(columns) * (tile_w + pad) + pad, tile_h + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(columns):
        x = pad + c * (tile_w + pad)
        canvas.paste(picture.crop((c * tile_w, 0, (c + 1) * tile_w, tile_h)), (x, pad))
        y = pad + tile_h + TEXT_MARGIN
        for text, ink in lines:
            draw.text((x + TEXT_MARGIN, y), text, fill=ink, font=font)
            y += line_height
    return canvas


def _line_height(font) -> int:
    top, bottom = font.getbbox("Ag|")[1::2]
    return bottom - min(top, 0) + 3


def _caption_lines(font, reference: str, generated: str, width: int) -> list[tuple[str, tuple]]:
    """(text, ink) lines for one column: the reference caption, then the generated one."""
    lines = [(text, REFERENCE_INK) for text in _wrap(font, f"ref: {reference}", width)]
    return lines + [(text, GENERATED_INK) for text in _wrap(font, f"gen: {generated}", width)]


def _wrap(font, text: str, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word wider than a line is broken by characters."""
    lines, line = [], ""
    for word in text.split():
        for piece in _split_wide(font, word, width):
            candidate = f"{line} {piece}" if line else piece
            if line and font.getlength(candidate) > width:
                lines.append(line)
                candidate = piece
            line = candidate
    lines.append(line)
    if len(lines) > MAX_CAPTION_LINES:
        lines = lines[:MAX_CAPTION_LINES]
        lines[-1] = lines[-1].rstrip() + " ..."
    return lines


def _split_wide(font, word: str, width: int) -> list[str]:
    pieces = []
    while font.getlength(word) > width and len(word) > 1:
        fits = [i for i in range(1, len(word)) if font.getlength(word[:i]) <= width]
        cut = fits[-1] if fits else 1
        pieces.append(word[:cut])
        word = word[cut:]
    return pieces + [word]


def save_grid(rows: list[torch.Tensor], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(path)
    return path
