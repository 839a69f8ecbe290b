"""Evaluate an exported tokenizer: `python -m scripts.evaluate TOKENIZER_DIR data=PATTERN [options]`.

Writes <out>/eval.json (metrics + protocol) and <out>/eval.md. PATTERN is any shard pattern vistok reads
(glob, directory, brace pattern). LPIPS runs when both --lpips-vgg and --lpips-heads are given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", type=Path)
    parser.add_argument("data", help="data=PATTERN (or just PATTERN)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the tokenizer's own")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lpips-vgg", default=None)
    parser.add_argument("--lpips-heads", default=None)
    parser.add_argument("--out", type=Path, default=None, help="default: <tokenizer>/eval")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from vistok import load_tokenizer
    from vistok.data.wds import expand_urls, make_val_loader
    from vistok.eval.tokenizer_eval import evaluate_tokenizer

    pattern = args.data.removeprefix("data=")
    tokenizer = load_tokenizer(args.tokenizer)
    resolution = args.resolution or tokenizer.resolution
    loader = make_val_loader(expand_urls(pattern), args.batch_size, resolution, 0, 1, 0)
    perceptual = None
    if args.lpips_vgg or args.lpips_heads:
        from vistok.losses.perceptual import LPIPS

        perceptual = LPIPS(args.lpips_vgg or "", args.lpips_heads or "")
    else:
        print("lpips skipped: pass --lpips-vgg and --lpips-heads (local weight files) to compute it")
    metrics = evaluate_tokenizer(tokenizer, loader, perceptual)
    protocol = {"data": pattern, "resolution": resolution, "resize": "short side to resolution (bicubic), "
                "centre crop", "psnr": "[0,1] pixels, per image, mean", "ssim": "torchmetrics gaussian 11/1.5",
                "lpips": "VGG16, local weights" if perceptual else "not computed"}
    out = args.out or args.tokenizer / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"metrics": metrics, "protocol": protocol}, indent=2))
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    (out / "eval.md").write_text(f"| metric | value |\n| --- | --- |\n{rows}\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
