"""Write img2dataset-layout shards of procedurally drawn landscapes at any resolution.

    python -m scripts.make_shards OUT --resolution 512 [--num-samples 16] [--per-shard 8] [--seed 0]
                                      [--quality 90]

Each image is drawn at its full size (nothing is upscaled from a small render): a sky gradient with
fractal clouds or stars, a sun or moon, noise-ridged mountain ranges fading with distance, textured
ground (grass, sand or snow), sometimes a lake reflecting the sky, then houses and trees. Detail exists
at every scale, so a 512 or 1024 px tokenizer sees edges, textures and gradients as in photographs.
The caption names what was drawn ("a red house and two pine trees on green grass under a blue daytime
sky, with snowy mountains in the distance"), so a captioning LLM has something to learn.

Layout, as img2dataset writes it: OUT/NNNNN.tar holding `<key>.jpg`, `<key>.txt` (caption) and
`<key>.json` (key, status, caption, width, height), and OUT/NNNNN_stats.json beside each shard.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from scripts.shard_writer import write_shards

SKIES = {  # name -> (zenith, horizon) colours
    "blue daytime sky": ((40, 100, 200), (170, 210, 240)),
    "orange sunset sky": ((60, 50, 120), (250, 150, 70)),
    "dark night sky": ((5, 8, 30), (30, 40, 80)),
    "grey overcast sky": ((110, 115, 125), (185, 185, 190)),
}
GROUNDS = {"green grass": (70, 130, 50), "yellow sand": (205, 180, 120), "white snow": (230, 235, 242)}
HOUSE_COLOURS = {"red": (180, 45, 40), "white": (235, 232, 225), "blue": (60, 90, 170),
                 "yellow": (225, 190, 60)}
MOUNTAINS = {"snowy mountains": (95, 100, 120), "blue hills": (80, 110, 150),
             "rocky mountains": (110, 95, 80)}
NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}


@dataclass
class Scene:
    """What one image shows, in the words its caption uses."""

    sky: str
    ground: str
    mountains: str | None
    lake: bool
    houses: list[str] = field(default_factory=list)  # colours
    pines: int = 0
    round_trees: int = 0


# ---- noise -------------------------------------------------------------------------------------------


def fractal_noise(rng: np.random.Generator, height: int, width: int, base: int = 4,
                  octaves: int = 6) -> np.ndarray:
    """(H, W) float32 in [0, 1]: value noise summed over octaves of doubling frequency, halving amplitude."""
    total = np.zeros((height, width), np.float32)
    norm = 0.0
    for octave in range(octaves):
        cells = base * 2 ** octave
        if cells > max(height, width):
            break
        grid = rng.random((cells, cells), dtype=np.float32)
        layer = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))
        amplitude = 0.5 ** octave
        total += amplitude * layer
        norm += amplitude
    return np.clip(total / norm, 0.0, 1.0)


def ridge(rng: np.random.Generator, width: int, octaves: int = 7) -> np.ndarray:
    """(W,) float32 in [0, 1]: a 1-D fractal profile for a mountain skyline, stretched so that its highest
    peak reaches 1."""
    profile = fractal_noise(rng, 1, width, base=3, octaves=octaves)[0]
    return (profile - profile.min()) / max(float(np.ptp(profile)), 1e-6)


# ---- layers ------------------------------------------------------------------------------------------


def vertical_gradient(top, bottom, height: int, width: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    colours = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(colours, (height, width, 3)).copy()


def draw_sky(rng: np.random.Generator, scene: Scene, size: int) -> np.ndarray:
    """(H, W, 3) float32: gradient, then clouds (day) or stars (night)."""
    sky = vertical_gradient(*SKIES[scene.sky], size, size)
    if scene.sky == "dark night sky":
        stars = rng.random((size, size)) > 0.9985
        sky[stars] = 235.0
    else:
        clouds = fractal_noise(rng, size, size, base=3)
        cover = np.clip((clouds - 0.5) * 3.0, 0.0, 1.0)[..., None]  # (H, W, 1)
        white = 250.0 if scene.sky != "grey overcast sky" else 200.0
        sky = (1 - cover) * sky + cover * white
    return sky


def draw_celestial(image: Image.Image, rng: np.random.Generator, scene: Scene, horizon: int) -> None:
    if scene.sky == "grey overcast sky":
        return
    size = image.width
    radius = int(size * rng.uniform(0.04, 0.07))
    x, y = int(size * rng.uniform(0.15, 0.85)), int(horizon * rng.uniform(0.2, 0.6))
    colour = {"blue daytime sky": (255, 245, 200), "orange sunset sky": (255, 200, 90),
              "dark night sky": (225, 225, 210)}[scene.sky]
    glow = Image.new("L", image.size, 0)
    ImageDraw.Draw(glow).ellipse((x - 2 * radius, y - 2 * radius, x + 2 * radius, y + 2 * radius), fill=90)
    glow = glow.filter(ImageFilter.GaussianBlur(radius))
    image.paste(Image.new("RGB", image.size, colour), mask=glow)
    ImageDraw.Draw(image).ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)


def mountain_layer(rng: np.random.Generator, canvas: np.ndarray, horizon: int, height: float, colour,
                   snowy: bool) -> None:
    """Paint a noise-ridged range whose foot is the horizon, in place; snow caps above 70% of its height."""
    size = canvas.shape[1]
    peaks = horizon - (ridge(rng, size) * height).astype(int)  # (W,) top row per column
    rows = np.arange(canvas.shape[0])[:, None]  # (H, 1)
    inside = (rows >= peaks[None, :]) & (rows < horizon)
    shade = 0.75 + 0.25 * fractal_noise(rng, canvas.shape[0], size, base=8)[..., None]
    rock = np.asarray(colour, np.float32) * shade
    canvas[inside] = rock[inside]
    if snowy:
        caps = inside & (rows < horizon - 0.7 * height)
        canvas[caps] = 240.0 * shade[caps]


def draw_ground(rng: np.random.Generator, canvas: np.ndarray, scene: Scene, horizon: int) -> None:
    size = canvas.shape[0]
    texture = fractal_noise(rng, size - horizon, size, base=16, octaves=7)[..., None]
    grain = rng.normal(0.0, 6.0, (size - horizon, size, 1)).astype(np.float32)
    base = np.asarray(GROUNDS[scene.ground], np.float32)
    canvas[horizon:] = base * (0.7 + 0.5 * texture) + grain


def draw_lake(rng: np.random.Generator, canvas: np.ndarray, horizon: int) -> None:
    """A band below the horizon reflecting the sky above it, darkened, with horizontal ripples."""
    size = canvas.shape[0]
    depth = int(size * rng.uniform(0.12, 0.22))
    top = horizon + int(size * 0.02)
    bottom = min(size, top + depth)
    reflection = canvas[max(0, 2 * horizon - bottom):horizon][::-1][: bottom - top]
    ripples = 0.85 + 0.1 * np.sin(np.arange(bottom - top, dtype=np.float32) * (200.0 / size))[:, None, None]
    water = reflection * ripples * np.asarray((0.7, 0.8, 0.95), np.float32)
    canvas[top:top + len(water)] = water


def draw_house(draw: ImageDraw.ImageDraw, x: int, ground_y: int, width: int, colour) -> None:
    height = int(width * 0.8)
    draw.rectangle((x, ground_y - height, x + width, ground_y), fill=colour, outline=(40, 30, 25))
    draw.polygon([(x - width // 8, ground_y - height), (x + width + width // 8, ground_y - height),
                  (x + width // 2, ground_y - height - width // 2)], fill=(110, 50, 35))
    pane = max(2, width // 6)
    for wx in (x + width // 6, x + width - width // 6 - pane):
        draw.rectangle((wx, ground_y - height * 2 // 3, wx + pane, ground_y - height * 2 // 3 + pane),
                       fill=(250, 225, 140), outline=(60, 50, 40))
    draw.rectangle((x + width // 2 - pane // 2, ground_y - height // 2, x + width // 2 + pane // 2, ground_y),
                   fill=(80, 50, 30))


def draw_pine(draw: ImageDraw.ImageDraw, x: int, ground_y: int, height: int) -> None:
    trunk = max(2, height // 12)
    draw.rectangle((x - trunk, ground_y - height // 5, x + trunk, ground_y), fill=(90, 60, 35))
    for tier in range(3):
        half = height // 4 - tier * height // 20
        bottom = ground_y - height // 5 - tier * height // 4
        draw.polygon([(x - half, bottom), (x + half, bottom), (x, bottom - height // 2)],
                     fill=(25, 85 + 10 * tier, 40))


def draw_round_tree(draw: ImageDraw.ImageDraw, x: int, ground_y: int, height: int) -> None:
    trunk = max(2, height // 14)
    draw.rectangle((x - trunk, ground_y - height // 2, x + trunk, ground_y), fill=(100, 70, 40))
    radius = height // 3
    centre = ground_y - height // 2 - radius // 2
    draw.ellipse((x - radius, centre - radius, x + radius, centre + radius), fill=(60, 140, 55))


# ---- scenes and captions -----------------------------------------------------------------------------


def sample_scene(rng: np.random.Generator) -> Scene:
    ground = str(rng.choice(list(GROUNDS)))
    mountains = str(rng.choice(list(MOUNTAINS))) if rng.random() < 0.8 else None
    houses = [str(rng.choice(list(HOUSE_COLOURS))) for _ in range(int(rng.integers(0, 3)))]
    pines = int(rng.integers(0, 4)) if ground != "yellow sand" else 0
    round_trees = int(rng.integers(0, 3)) if ground == "green grass" else 0
    return Scene(sky=str(rng.choice(list(SKIES))), ground=ground, mountains=mountains,
                 lake=rng.random() < 0.4, houses=houses, pines=pines, round_trees=round_trees)


def _count(n: int, noun: str) -> str:
    return f"{NUMBERS[n]} {noun}{'s' if n > 1 else ''}"


def caption(scene: Scene) -> str:
    things = []
    for colour in sorted(set(scene.houses)):
        things.append(_count(scene.houses.count(colour), f"{colour} house"))
    if scene.pines:
        things.append(_count(scene.pines, "pine tree"))
    if scene.round_trees:
        things.append(_count(scene.round_trees, "leafy tree"))
    subject = " and ".join(things) if things else "an empty landscape"
    article = "an" if scene.sky[0] in "aeiou" else "a"
    text = f"{subject} on {scene.ground} under {article} {scene.sky}"
    extras = [f"{scene.mountains} in the distance"] if scene.mountains else []
    if scene.lake:
        extras.append("a calm lake reflecting the sky")
    return text + (", with " + " and ".join(extras) if extras else "")


def render(rng: np.random.Generator, scene: Scene, size: int) -> Image.Image:
    """The scene drawn at size x size pixels."""
    horizon = int(size * rng.uniform(0.5, 0.65))
    canvas = draw_sky(rng, scene, size)
    if scene.mountains:
        near = np.asarray(MOUNTAINS[scene.mountains], np.float32)
        far = near * 0.6 + np.asarray(SKIES[scene.sky][1], np.float32) * 0.4  # haze: distance fades to sky
        snowy = scene.mountains == "snowy mountains"
        mountain_layer(rng, canvas, horizon, size * 0.3, far, snowy)
        mountain_layer(rng, canvas, horizon, size * 0.18, near, snowy)
    draw_ground(rng, canvas, scene, horizon)
    if scene.lake:
        draw_lake(rng, canvas, horizon)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw_celestial(image, rng, scene, horizon)
    draw_objects(image, rng, scene, horizon)
    return image


def draw_objects(image: Image.Image, rng: np.random.Generator, scene: Scene, horizon: int) -> None:
    """Houses and trees standing on the ground, nearer ones lower and larger."""
    size = image.width
    draw = ImageDraw.Draw(image)
    objects = ([("house", c) for c in scene.houses] + [("pine", None)] * scene.pines
               + [("round", None)] * scene.round_trees)
    for kind, colour in objects:
        ground_y = int(rng.uniform(horizon + 0.08 * size, size * 0.97))
        scale = (ground_y - horizon) / (size - horizon)  # 0 at the horizon, 1 at the bottom edge
        x = int(rng.uniform(0.05, 0.85) * size)
        if kind == "house":
            draw_house(draw, x, ground_y, int(size * (0.08 + 0.12 * scale)), HOUSE_COLOURS[colour])
        elif kind == "pine":
            draw_pine(draw, x, ground_y, int(size * (0.12 + 0.2 * scale)))
        else:
            draw_round_tree(draw, x, ground_y, int(size * (0.1 + 0.18 * scale)))


# ---- shards ------------------------------------------------------------------------------------------


def make_shards(out: Path | str, resolution: int, num_samples: int = 16, per_shard: int = 8, seed: int = 0,
                quality: int = 90) -> list[Path]:
    """Write `num_samples` images of `resolution` px into OUT/NNNNN.tar shards; returns the shard paths."""
    if resolution < 16 or num_samples < 1 or not 1 <= per_shard <= 10000:
        raise ValueError(f"need resolution >= 16, num_samples >= 1 and 1 <= per_shard <= 10000, got "
                         f"{resolution}, {num_samples}, {per_shard}")
    rng = np.random.default_rng(seed)

    def scenes():
        while True:
            scene = sample_scene(rng)
            yield render(rng, scene, resolution), caption(scene)

    return write_shards(Path(out), scenes(), num_samples, per_shard, "jpg", quality)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--resolution", type=int, required=True)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--per-shard", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = parser.parse_args(argv)
    try:
        paths = make_shards(args.out, args.resolution, args.num_samples, args.per_shard, args.seed,
                            args.quality)
    except ValueError as error:
        print(f"make_shards: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_samples} images of {args.resolution} px in {len(paths)} shard(s) "
          f"under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
