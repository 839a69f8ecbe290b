"""Mini-GenEval of a trained run: `python -m scripts.geneval RUN_DIR [--num-images 500] [--guidance-scale 3] ...`.

The same measurement a run with `geneval.enabled=true` makes after its last stage, re-run on demand (more
images, other sampling settings). The held-out captions and real images are the run's generated dataset
(rebuilt from its `data` config under the cache dir when missing); the attribute classifier is the cached one
(trained on the real training images when absent). Prints the metrics and writes them as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a training run directory (or a .ckpt inside one)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--cache-dir", default=os.environ.get("VISTOK_CACHE", ".cache"))
    parser.add_argument("--out", default=None, help="JSON file for the metrics")
    return parser.parse_args(argv)


def dataset_urls(run_dir: Path, cache_dir: str) -> tuple[list[str], list[str], int]:
    """(train urls, val urls, resolution) of the run's generated dataset."""
    from omegaconf import OmegaConf

    from vistok import untrusted
    from vistok.data.generated import ensure_generated
    from vistok.data.wds import expand_urls

    # A run directory may come from anyone: the keys read here follow plain references, no resolver
    # (oc.env ...) runs.
    keys = ("_target_", "num_train", "num_val", "seed", "resolution", "mark_size", "mark_contrast")
    raw = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
    data = untrusted.resolve_references({**raw, "data": {k: raw["data"].get(k) for k in keys}}, "data")
    if "GeneratedDataModule" not in str(data.get("_target_", "")):
        raise ValueError(f"{run_dir} was not trained on the generated dataset (data: {data.get('_target_')})")
    params = {k: data[k] for k in keys[1:]}
    train, val = ensure_generated(os.path.join(cache_dir, "data"), **params, samples_per_shard=100)
    return expand_urls(train), expand_urls(val), int(params["resolution"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from vistok.eval.attribute_classifier import ensure_classifier
    from vistok.generation.evaluate import run_geneval
    from vistok.generation.loading import load_generator
    from vistok.generation.sampling import SamplingOptions
    from vistok.checkpoint_files import locate

    try:
        options = SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  guidance_scale=args.guidance_scale, seed=args.seed)
        _, run_dir = locate(args.source)
        train, val, resolution = dataset_urls(run_dir, args.cache_dir)
        generator = load_generator(args.source)
    except (FileNotFoundError, ValueError) as error:
        print(f"geneval failed: {error}", file=sys.stderr)
        return 2
    judge = ensure_classifier(Path(args.cache_dir) / "geneval", train, val, resolution)
    metrics = run_geneval(generator, judge, val, resolution, options, num_images=args.num_images,
                          batch_size=args.batch_size)
    metrics["options"] = vars(options)
    print(json.dumps(metrics, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
