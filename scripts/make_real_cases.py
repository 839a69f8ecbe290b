"""Write real-image test cases as img2dataset-layout shards from data that Python packages ship (no download).

    python -m scripts.make_real_cases OUT --case digits [--resolution 32] [--num-train 6000] [--num-val 500]
    python -m scripts.make_real_cases OUT --case photos --resolution 128

Cases (each caption needs several attributes of its image, so exact-match captioning is compositional):
- digits: two real handwritten digits (scikit-learn's 1,797 scanned 8 x 8 glyphs), each tinted one of four
  colours, side by side on a grey ground: "a red 3 left of a blue 7" (10 x 4 x 10 x 4 = 1,600 captions).
  Validation images use glyphs that no training image uses.
- photos: crops of eight photographs that scikit-image ships (astronaut, cat, coffee, galaxies, motorcycle,
  retina, rocket, stained tissue), one of nine regions of the photograph, mirrored or not:
  "the top left of the rocket photograph, mirrored" (8 x 9 x 2 = 144 captions). Crops jitter in place and
  size, so no two images are the same; validation draws its own crops.

Layout: OUT/train/NNNNN.tar and OUT/val/NNNNN.tar holding `<key>.png`, `<key>.txt` (caption) and `<key>.json`,
with NNNNN_stats.json beside each shard. Train on them with
`data=shards data.train=OUT/train data.val=OUT/val` (and data.resolution=R above 32 px).
Needs scikit-learn (digits) or scikit-image (photos): `pip install -e ".[real]"`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.shard_writer import Sample, write_shards

COLOURS = {"red": (225, 55, 45), "green": (60, 185, 70), "blue": (70, 110, 240), "yellow": (235, 205, 50)}
PHOTOS = {  # scikit-image sample -> the name captions use
    "astronaut": "astronaut", "chelsea": "cat", "coffee": "coffee", "hubble_deep_field": "galaxy",
    "stereo_motorcycle": "motorcycle", "retina": "retina", "rocket": "rocket",
    "immunohistochemistry": "tissue",
}
REGIONS = ["top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right"]
DIGIT_VAL_SHARE = 0.2  # the last fifth of scikit-learn's glyphs is held out for validation
CASES = ("digits", "photos")


# ---- digits ------------------------------------------------------------------------------------------


def load_glyphs(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits of one split: (M, 8, 8) intensities in [0, 1], (M,) labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs, labels = digits.images / 16.0, digits.target
    cut = int(len(labels) * (1 - DIGIT_VAL_SHARE))
    return (glyphs[:cut], labels[:cut]) if split == "train" else (glyphs[cut:], labels[cut:])


def digit_pair(rng: np.random.Generator, glyphs: np.ndarray, labels: np.ndarray, size: int) -> Sample:
    """Two tinted glyphs on a grey ground, left and right, each jittered a little; their caption."""
    ground = rng.uniform(25, 70)
    canvas = np.full((size, size, 3), ground, dtype=np.float64)
    side = max(4, round(size * 0.42))  # glyph side: two fit side by side with a margin
    words = []
    for slot, centre_x in enumerate((0.27, 0.73)):
        pick = int(rng.integers(len(labels)))
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        glyph = Image.fromarray((glyphs[pick] * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        alpha = np.asarray(glyph, dtype=np.float64)[..., None] / 255.0  # (side, side, 1)
        x = int(round(centre_x * size - side / 2 + rng.uniform(-0.06, 0.06) * size))
        y = int(round(size / 2 - side / 2 + rng.uniform(-0.12, 0.12) * size))
        x, y = min(max(x, 0), size - side), min(max(y, 0), size - side)
        patch = canvas[y:y + side, x:x + side]
        canvas[y:y + side, x:x + side] = patch * (1 - alpha) + np.array(COLOURS[colour]) * alpha
        words.append(f"a {colour} {int(labels[pick])}")
    image = Image.fromarray(np.clip(canvas + rng.normal(0, 3, canvas.shape), 0, 255).astype(np.uint8))
    return image, f"{words[0]} left of {words[1]}"


def digit_samples(split: str, size: int, rng: np.random.Generator) -> Iterator[Sample]:
    glyphs, labels = load_glyphs(split)
    while True:
        yield digit_pair(rng, glyphs, labels, size)


# ---- photos ------------------------------------------------------------------------------------------


def load_photos() -> dict[str, np.ndarray]:
    """The shipped photographs as (H, W, 3) uint8, by caption name."""
    import skimage.data

    photos = {}
    for sample, name in PHOTOS.items():
        image = getattr(skimage.data, sample)()
        image = np.asarray(image[0] if isinstance(image, tuple) else image)  # the stereo pair's left view
        photos[name] = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    return photos


def photo_crop(rng: np.random.Generator, photos: dict[str, np.ndarray], size: int) -> Sample:
    """A jittered crop of one of nine regions of one photograph, maybe mirrored; its caption."""
    name = list(photos)[int(rng.integers(len(photos)))]
    photo = photos[name]
    region = int(rng.integers(len(REGIONS)))
    height, width = photo.shape[:2]
    cell = min(height, width) / 3 * rng.uniform(0.9, 1.2)  # the crop's side, about a third of the photo
    centre_y = (region // 3 + 0.5) / 3 * height + rng.uniform(-0.08, 0.08) * height
    centre_x = (region % 3 + 0.5) / 3 * width + rng.uniform(-0.08, 0.08) * width
    top = int(np.clip(centre_y - cell / 2, 0, height - cell))
    left = int(np.clip(centre_x - cell / 2, 0, width - cell))
    side = int(cell)
    crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
    mirrored = bool(rng.integers(2))
    if mirrored:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return crop, f"the {REGIONS[region]} of the {name} photograph" + (", mirrored" if mirrored else "")


def photo_samples(split: str, size: int, rng: np.random.Generator) -> Iterator[Sample]:
    photos = load_photos()
    while True:
        yield photo_crop(rng, photos, size)


SAMPLERS: dict[str, Callable[[str, int, np.random.Generator], Iterator[Sample]]] = {
    "digits": digit_samples, "photos": photo_samples}


def make_case(out: Path | str, case: str, resolution: int = 32, num_train: int = 6000, num_val: int = 500,
              per_shard: int = 1000, seed: int = 0) -> dict[str, list[Path]]:
    """Write OUT/train and OUT/val for `case`; returns the shard paths of each split."""
    if case not in SAMPLERS:
        raise ValueError(f"unknown case '{case}' (known: {', '.join(CASES)})")
    if resolution < 16 or num_train < 1 or num_val < 1 or not 1 <= per_shard <= 10000:
        raise ValueError(f"need resolution >= 16, num_train and num_val >= 1 and 1 <= per_shard <= 10000, "
                         f"got {resolution}, {num_train}, {num_val}, {per_shard}")
    out = Path(out)
    for split in ("train", "val"):
        if (out / split).exists() and any((out / split).iterdir()):
            raise FileExistsError(f"{out / split} is not empty: write the case to a new directory")
    seeds = np.random.SeedSequence(seed).spawn(2)
    # PNG: lossless, at 32 px JPEG's blocks would be half of what a tokenizer learns
    splits = (("train", num_train, seeds[0]), ("val", num_val, seeds[1]))
    return {split: write_shards(out / split, SAMPLERS[case](split, resolution, np.random.default_rng(stream)),
                                count, per_shard, image_format="png")
            for split, count, stream in splits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        make_case(args.out, args.case, args.resolution, args.num_train, args.num_val, args.per_shard,
                  args.seed)
    except ImportError as error:
        print(f"make_real_cases: {error.name} is needed for the '{args.case}' case: pip install -e '.[real]'",
              file=sys.stderr)
        return 2
    except (ValueError, FileExistsError) as error:
        print(f"make_real_cases: {error}", file=sys.stderr)
        return 2
    resolution = f" data.resolution={args.resolution}" if args.resolution != 32 else ""
    print(f"wrote {args.num_train} training and {args.num_val} validation images ({args.case}, "
          f"{args.resolution} px) under {args.out}\ntrain on them with: data=shards "
          f"data.train={args.out}/train data.val={args.out}/val{resolution}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
