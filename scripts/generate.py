"""Captions -> images with a trained run: `python -m scripts.generate RUN_DIR [--caption TEXT ...] --out grid.png`.

The run must have trained generation (`module.generation=true`, e.g. `experiment=ett_mini_gen`); its newest
finished stage's checkpoint is used. The LLM writes the visual tokens autoregressively (temperature, top-k,
top-p, classifier-free guidance against the empty caption), the tokenizer decodes them, and the images are
written as one PNG grid with their captions. Without --caption, --num random captions of the generated
dataset's template are drawn (from --seed).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from vistok.data.generated import SLOTS, caption_from_attributes


def random_captions(count: int, seed: int) -> list[str]:
    """`count` captions of the generated dataset, every attribute drawn uniformly."""
    rng = random.Random(seed)
    return [caption_from_attributes({slot: rng.choice(values) for slot, values in SLOTS.items()})
            for _ in range(count)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a training run directory (or a .ckpt inside one)")
    parser.add_argument("--caption", action="append", default=[], help="a caption (repeat for several)")
    parser.add_argument("--num", type=int, default=16, help="random captions to draw when no --caption is given")
    parser.add_argument("--out", default=None, help="PNG grid path (default: RUN_DIR/images/generated.png)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (1 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--columns", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from vistok.generation.grid import save_caption_grid
    from vistok.generation.loading import load_generator
    from vistok.generation.sampling import SamplingOptions

    try:
        options = SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  guidance_scale=args.guidance_scale, seed=args.seed)
        if not args.caption and args.num < 1:
            raise ValueError(f"--num must be >= 1, got {args.num}")
        generator = load_generator(args.source)
    except (FileNotFoundError, ValueError) as error:
        print(f"generate failed: {error}", file=sys.stderr)
        return 2
    captions = args.caption or random_captions(args.num, args.seed)
    result = generator.generate(captions, options, batch_size=args.batch_size)
    source = Path(args.source)
    default = (source if source.is_dir() else source.parent) / "images" / "generated.png"
    out = save_caption_grid(result.images, captions, args.out or default, columns=args.columns)
    print(f"wrote {len(captions)} images to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
