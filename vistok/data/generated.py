"""The embedded "shapes-cap" dataset: tiny captioned images generated deterministically from a seed.

Each image shows one coloured shape on a dark background plus a tiny, dim "mark" square in the
bottom-right corner. The caption names every attribute, including the mark's colour; because the mark
is small and low-contrast a pixel reconstruction loss nearly ignores it, which is exactly what makes
it a probe for whether a tokenizer keeps caption-relevant detail.

Samples are written as real webdataset shards in the img2dataset layout so that the same reading code
serves this dataset and real web-scale shards.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from vistok.cache import cached

SLOTS: dict[str, tuple[str, ...]] = {
    "size": ("small", "large"),
    "colour": ("red", "green", "blue", "yellow", "magenta", "cyan"),
    "shape": ("circle", "square", "triangle", "cross"),
    "position": ("left", "right", "top", "bottom", "centre"),
    "mark": ("red", "green", "blue", "yellow"),
}

# Named colours shared by the shape and the mark vocabularies.
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
}
_BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((15, 15, 20), (32, 22, 18), (18, 28, 35))
# Geometry in the 32-px reference frame: (x, y) centres and radii.
_CENTRES: dict[str, tuple[float, float]] = {
    "left": (8.0, 16.0),
    "right": (24.0, 16.0),
    "top": (16.0, 8.0),
    "bottom": (16.0, 24.0),
    "centre": (16.0, 16.0),
}
_RADII: dict[str, float] = {"small": 4.0, "large": 7.0}
_REF = 32.0
# Bumped whenever rendering or the shard layout changes, so stale caches are not reused.
_FORMAT_VERSION = 1


def caption_from_attributes(attrs: dict) -> str:
    """Render the caption for an attribute dict with one entry per slot of `SLOTS`."""
    return "a {size} {colour} {shape} at {position} with {mark} mark".format(**attrs)


def parse_caption(text: str) -> dict[str, str | None]:
    """Read slot values back from (possibly generated, possibly garbage) caption text.

    Every slot is read independently from the word where the template puts it; a slot whose word is
    missing or not in its vocabulary is None. Never raises, so it can score arbitrary model output.
    """
    result: dict[str, str | None] = {slot: None for slot in SLOTS}
    if not isinstance(text, str):
        return result
    words = text.lower().replace(".", " ").replace(",", " ").split()
    for slot, word in _words_by_slot(words).items():
        if word in SLOTS[slot]:
            result[slot] = word
    return result


def _words_by_slot(words: list[str]) -> dict[str, str | None]:
    """Candidate word per slot, located relative to the template's anchor words "at" and "with"."""
    found: dict[str, str | None] = {}
    if "at" in words:
        at = words.index("at")
        # size, colour and shape are the three words before "at", in order.
        for offset, slot in zip((3, 2, 1), ("size", "colour", "shape")):
            found[slot] = words[at - offset] if at - offset >= 0 else None
        found["position"] = words[at + 1] if at + 1 < len(words) else None
    if "with" in words:
        at = words.index("with")
        found["mark"] = words[at + 1] if at + 1 < len(words) else None
    return found


def _sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Draw one value per slot, uniformly, in caption order."""
    return {slot: values[int(rng.integers(len(values)))] for slot, values in SLOTS.items()}


def _shape_mask(shape: str, cx: float, cy: float, r: float, resolution: int) -> np.ndarray:
    """Boolean (H, W) mask of a shape given in 32-px reference coordinates."""
    scale = resolution / _REF
    # Pixel centres expressed in the 32-px frame, so geometry is resolution independent.
    coords = (np.arange(resolution, dtype=np.float32) + 0.5) / scale
    x, y = coords[None, :] - cx, coords[:, None] - cy
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        # Slightly smaller half-width than the circle radius so the areas are comparable.
        return (np.abs(x) <= 0.85 * r) & (np.abs(y) <= 0.85 * r)
    if shape == "triangle":
        # Apex at the top, base of width 2r at the bottom.
        return (y <= r) & (np.abs(x) <= (y + r) / 2.0)
    if shape == "cross":
        arm = 0.35 * r
        horizontal = (np.abs(y) <= arm) & (np.abs(x) <= r)
        vertical = (np.abs(x) <= arm) & (np.abs(y) <= r)
        return horizontal | vertical
    raise ValueError(f"unknown shape {shape!r}")


def _mark_box(resolution: int, mark_size: int) -> tuple[int, int]:
    """(start, stop) pixel range of the mark square on both axes (bottom-right corner)."""
    scale = resolution / _REF
    size = max(1, round(mark_size * scale))
    margin = max(1, round(scale))
    stop = resolution - margin
    return max(0, stop - size), stop


def render_sample(
    rng: np.random.Generator,
    resolution: int = 32,
    mark_size: int = 2,
    mark_contrast: float = 0.5,
) -> tuple[np.ndarray, dict]:
    """Draw one random captioned image.

    Returns:
        image: (resolution, resolution, 3) uint8 array.
        attrs: one value per slot of `SLOTS`.
    """
    attrs = _sample_attributes(rng)
    background = np.asarray(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))], dtype=np.float32)
    # Integer jitter in the reference frame keeps images varied without changing the caption.
    jx, jy = (int(v) for v in rng.integers(-1, 2, size=2))
    cx, cy = _CENTRES[attrs["position"]]
    mask = _shape_mask(attrs["shape"], cx + jx, cy + jy, _RADII[attrs["size"]], resolution)
    start, stop = _mark_box(resolution, mark_size)
    # Keep the shape off the mark and its margin ring for any mark size, not just the default one.
    guard = max(1, round(resolution / _REF))
    mask[max(0, start - guard):, max(0, start - guard):] = False
    image = np.broadcast_to(background, (resolution, resolution, 3)).copy()
    image[mask] = _RGB[attrs["colour"]]
    mark_rgb = background * (1.0 - mark_contrast) + np.asarray(_RGB[attrs["mark"]]) * mark_contrast
    image[start:stop, start:stop] = mark_rgb
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), attrs


def _png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG encoding; PIL writes no timestamp chunk, so output is deterministic."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    """Append one file with fixed metadata so identical content gives identical tar bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def _write_one_shard(path: str, keys_and_samples: list[tuple[str, np.ndarray, dict]]) -> None:
    """Write one tar shard with `<key>.png`, `<key>.txt`, `<key>.json` members per sample."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, attrs in keys_and_samples:
            caption = caption_from_attributes(attrs)
            meta = {
                "key": key,
                "caption": caption,
                "status": "success",
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "attributes": attrs,
            }
            _add_member(tar, f"{key}.png", _png_bytes(image))
            _add_member(tar, f"{key}.txt", caption.encode("utf-8"))
            _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))


def _write_stats(shard_path: str, count: int) -> None:
    """Write the img2dataset-style `<shard>_stats.json` next to a shard."""
    stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0}
    with open(shard_path[: -len(".tar")] + "_stats.json", "w") as handle:
        json.dump(stats, handle, sort_keys=True)


def write_shards(
    out_dir: str,
    split: str,
    num_samples: int,
    seed: int,
    resolution: int = 32,
    mark_size: int = 2,
    mark_contrast: float = 0.5,
    samples_per_shard: int = 1000,
) -> list[str]:
    """Render `num_samples` images from `seed` into `{out_dir}/{split}-NNNNN.tar` shards.

    Keys are the 5-digit shard id followed by a 4-digit index (no dots: webdataset splits the key at
    the first dot). Returns the shard paths in order.
    """
    if samples_per_shard < 1 or samples_per_shard > 10000:
        raise ValueError("samples_per_shard must be in [1, 10000] (keys use a 4-digit index)")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for shard_id, first in enumerate(range(0, num_samples, samples_per_shard)):
        count = min(samples_per_shard, num_samples - first)
        samples = []
        for index in range(count):
            image, attrs = render_sample(rng, resolution, mark_size, mark_contrast)
            samples.append((f"{shard_id:05d}{index:04d}", image, attrs))
        path = os.path.join(out_dir, f"{split}-{shard_id:05d}.tar")
        _write_one_shard(path, samples)
        _write_stats(path, count)
        paths.append(path)
    return paths


def _split_seed(seed: int, split_index: int) -> int:
    """Independent, deterministic seed per split derived from the user seed."""
    return int(np.random.SeedSequence([seed, split_index]).generate_state(1)[0])


def _brace_pattern(directory: str, split: str, num_shards: int) -> str:
    """`{dir}/{split}-{00000..N}.tar`, the form webdataset and `expand_urls` understand."""
    return os.path.join(directory, f"{split}-{{00000..{num_shards - 1:05d}}}.tar")


def _generate_into(directory: Path, params: dict) -> None:
    """Write both splits and the parameters they were generated from into an empty `directory`."""
    common = {k: params[k] for k in ("resolution", "mark_size", "mark_contrast", "samples_per_shard")}
    write_shards(str(directory), "train", params["num_train"], _split_seed(params["seed"], 0), **common)
    write_shards(str(directory), "val", params["num_val"], _split_seed(params["seed"], 1), **common)
    with open(directory / "params.json", "w") as handle:
        json.dump(params, handle, sort_keys=True, indent=1)


def ensure_generated(
    cache_dir: str,
    num_train: int = 6000,
    num_val: int = 500,
    seed: int = 0,
    resolution: int = 32,
    mark_size: int = 2,
    mark_contrast: float = 0.5,
    samples_per_shard: int = 1000,
) -> tuple[str, str]:
    """Generate the dataset into a parameter-keyed cache directory (`shapes-cap-<key>`, see `vistok.cache`)
    unless it is already there.

    Generation goes to a temporary directory that is renamed into place, so concurrent callers (e.g.
    several ranks) and interrupted runs never expose a half-written cache.

    Returns:
        (train_pattern, val_pattern) brace patterns accepted by `expand_urls`.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError("num_train and num_val must be positive")
    params = dict(num_train=num_train, num_val=num_val, seed=seed, resolution=resolution,
                  mark_size=mark_size, mark_contrast=float(mark_contrast),
                  samples_per_shard=samples_per_shard)
    cache_dir = os.path.abspath(os.path.expanduser(str(cache_dir)))
    final = str(cached(cache_dir, "shapes-cap-", {**params, "format_version": _FORMAT_VERSION},
                       lambda tmp: _generate_into(tmp, params), directory=True))
    return (_brace_pattern(final, "train", -(-num_train // samples_per_shard)),
            _brace_pattern(final, "val", -(-num_val // samples_per_shard)))
