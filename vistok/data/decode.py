"""Image bytes from a shard -> (3, R, R) float tensor in [-1, 1]: every mode converted, the cost bounded.

Shards come from the web, so an image is untrusted input:

- Formats: JPEG (with MPO, the multi-picture JPEG many cameras write, which Pillow opens as a JPEG), PNG and
  WebP, whatever the member's extension says. Every other format Pillow could open (TIFF, EPS, PSD, ...) is
  refused: each extra decoder is attack surface no img2dataset shard needs.
- Modes: 16-bit greyscale (`I;16`, `I;16B`, `I`, values 0..65535) is scaled to 8 bits (`round(x / 257)`), not
  clipped (clipping turns almost every pixel white). Images with transparency (RGBA, LA, PA, or a transparent
  palette index / colour) are composited over `BACKGROUND`, white, the way a browser shows them on a page.
  CMYK, L, 1, P and the rest go through Pillow's RGB conversion.
- Size: an image whose header declares more than `MAX_DECODE_PIXELS` pixels is refused before any pixel is
  decoded (`ImageTooLargeError`), except a JPEG, which the decoder itself scales down by 1/2 to 1/8 (`draft`)
  as long as its short side stays at least the resolution. An image with an extreme aspect ratio resamples
  only the crop window: resizing a 1 x 16000 image to a 256-pixel short side would first make a 1-Gpx image.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

MAX_DECODE_PIXELS = 32_000_000  # 128 MB as RGBA; a 24-Mpx camera photo fits, a 12000 x 12000 bomb does not
BACKGROUND = (255, 255, 255)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Up to this many crops' area the image is resized whole and then cropped (the exact result vistok always
# gave); beyond it only the crop window is resampled, which differs by rounding but costs one crop.
_FULL_RESIZE_MAX_CROPS = 16


class ImageTooLargeError(ValueError):
    """The image declares more pixels than `MAX_DECODE_PIXELS` (a decompression bomb, an oversized photo)."""


def load_image(data: bytes, resolution: int) -> torch.Tensor:
    """Decode image bytes, resize the short side to `resolution`, centre-crop to a square.

    Returns:
        (3, resolution, resolution) float tensor in [-1, 1].

    Raises:
        ImageTooLargeError: the header declares more than `MAX_DECODE_PIXELS` pixels (after JPEG `draft`).
        PIL.UnidentifiedImageError: not a JPEG, PNG or WebP.
    """
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
        _bound_decode_size(img, resolution)
        img.load()
        rgb = to_rgb(img)
    return _to_unit_range(_resize_and_crop(rgb, resolution))


def _bound_decode_size(img: Image.Image, resolution: int) -> None:
    """Refuse (a JPEG: shrink while decoding) an image above the pixel limit; reads only the header."""
    width, height = img.size
    if width * height <= MAX_DECODE_PIXELS:
        return
    if img.format in ("JPEG", "MPO"):
        scale = resolution / min(width, height)
        # The decoder's 1/2 .. 1/8 scaling, as far as the short side stays at least `resolution`.
        img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    if img.size[0] * img.size[1] > MAX_DECODE_PIXELS:
        raise ImageTooLargeError(f"{img.format} image of {width} x {height} pixels is above the decode limit "
                                 f"of {MAX_DECODE_PIXELS:,} pixels")


def to_rgb(img: Image.Image) -> Image.Image:
    """The image as 8-bit RGB: 16-bit values scaled, transparent pixels composited over `BACKGROUND`."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img  # converting an RGB image would only copy it
    if img.mode in SIXTEEN_BIT_MODES:
        img = _sixteen_to_eight_bit(img)
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        return _over_background(img)
    return img.convert("RGB")


def _sixteen_to_eight_bit(img: Image.Image) -> Image.Image:
    """L (or LA, when a 16-bit transparent grey value is set) with `round(x / 257)`: 0 -> 0, 65535 -> 255."""
    values = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
    grey = Image.fromarray(((values + 128) // 257).astype(np.uint8))  # exact rounding of x / 257
    transparent = img.info.get("transparency")
    if not isinstance(transparent, int):
        return grey
    alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
    return Image.merge("LA", (grey, alpha))


def _over_background(img: Image.Image) -> Image.Image:
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # applies a palette's or colour's transparency
    flat = Image.new("RGB", rgba.size, BACKGROUND)
    flat.paste(rgba, (0, 0), rgba)  # the alpha band is the mask: out = a * pixel + (1 - a) * background
    return flat


def _resize_and_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Short side to `resolution` (bicubic), then the centred `resolution` square."""
    width, height = img.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    if size[0] * size[1] > _FULL_RESIZE_MAX_CROPS * resolution**2:
        x_scale, y_scale = width / size[0], height / size[1]
        window = (left * x_scale, top * y_scale, (left + resolution) * x_scale, (top + resolution) * y_scale)
        return img.resize((resolution, resolution), Image.BICUBIC, box=window)
    if size != img.size:
        img = img.resize(size, Image.BICUBIC)
    if size != (resolution, resolution):
        img = img.crop((left, top, left + resolution, top + resolution))
    return img


def _to_unit_range(img: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1] from an RGB image, as `x / 127.5 - 1` in float32.

    The float array is made once and scaled in place: per sample, the intermediate uint8 copy and
    tensor calls cost as much as decoding a small PNG.
    """
    array = np.asarray(img, dtype=np.float32)  # a fresh, writable array
    array /= 127.5
    array -= 1.0
    return torch.from_numpy(array).permute(2, 0, 1)
