"""Write (image, caption) pairs as img2dataset-layout webdataset shards (used by scripts.make_shards and
scripts.make_real_cases).

Layout, as img2dataset writes it: OUT/NNNNN.tar holding `<key>.<ext>` (the image), `<key>.txt` (caption) and
`<key>.json` (key, status, caption, width, height), and OUT/NNNNN_stats.json beside each shard.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

Sample = tuple[Image.Image, str]  # an image and its caption


def encode_image(image: Image.Image, image_format: str, quality: int = 90) -> bytes:
    """PNG (lossless) or JPEG bytes of `image`."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_shards(out: Path, samples: Iterator[Sample], count: int, per_shard: int, image_format: str = "jpg",
                 quality: int = 90) -> list[Path]:
    """The first `count` of `samples` into out/NNNNN.tar shards of `per_shard`; returns the shard paths."""
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got '{image_format}'")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, first in enumerate(range(0, count, per_shard)):
        rows = min(per_shard, count - first)
        path = out / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in range(rows):
                image, caption = next(samples)
                key = f"{shard:05d}{row:04d}"  # no dots: webdataset splits the key at the first one
                meta = {"key": key, "status": "success", "caption": caption, "error_message": None,
                        "width": image.width, "height": image.height}
                _add(tar, f"{key}.{image_format}", encode_image(image, image_format, quality))
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        stats = {"count": rows, "successes": rows, "failed_to_download": 0, "failed_to_resize": 0}
        (out / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
        paths.append(path)
    return paths


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
