"""Evaluate an exported tokenizer: `python -m scripts.evaluate TOKENIZER_DIR data=PATTERN [options]`.

Writes <out>/eval.json (metrics, and beside them the protocol of every number: split, resolution, resize
filter, implementation) and <out>/eval.md. PATTERN is any shard pattern vistok reads (glob, directory, brace
pattern). Optional metrics, all from local files only:
- LPIPS when both --lpips-vgg and --lpips-heads are given;
- rFID when --fid-weights (or the VISTOK_FID_WEIGHTS environment variable) names a feature-extractor file;
- linear probes (probe_accuracy) when the captions are the generated dataset's; trained on --probe-train
  shards if given, else on 4 of every 5 eval samples and scored on the fifth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

RESIZE = "short side to resolution (PIL bicubic), centre crop"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", type=Path)
    parser.add_argument("data", help="data=PATTERN (or just PATTERN)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the tokenizer's own")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lpips-vgg", default=None)
    parser.add_argument("--lpips-heads", default=None)
    parser.add_argument("--fid-weights", default=os.environ.get("VISTOK_FID_WEIGHTS") or None,
                        help="FID Inception (.pth/.safetensors) or ConvFeatures (.safetensors) weight file")
    parser.add_argument("--probe-train", default=None, help="shard PATTERN to train the linear probes on")
    parser.add_argument("--probe-max-samples", type=int, default=5000)
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probes")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--out", type=Path, default=None, help="default: <tokenizer>/eval")
    return parser.parse_args(argv)


def build_probe(args, tokenizer, resolution: int):
    """A LinearProbe, with features from --probe-train shards when given (an extra encode-only pass)."""
    from vistok.data.schema import generated_captions
    from vistok.data.wds import expand_urls, make_val_loader
    from vistok.eval.probe import LinearProbe
    from vistok.eval.tokenizer_eval import collect_probe_features

    if args.no_probe:
        return None
    schema = generated_captions()  # the probes score the attributes the generated set's captions name
    if args.probe_train is None:
        return LinearProbe(max_samples=args.probe_max_samples, schema=schema)
    loader = make_val_loader(expand_urls(args.probe_train), args.batch_size, resolution, 0, 1, 0)
    train = collect_probe_features(tokenizer, loader, schema, args.probe_max_samples, args.device)
    return LinearProbe(train, f"{args.probe_train}, first labelled samples in shard order",
                       max_samples=args.probe_max_samples, schema=schema)


def build_protocol(args, pattern: str, resolution: int, metrics: dict, perceptual, rfid, probe) -> dict:
    """One record per metric family, each with the split, resolution and resize it was measured on."""
    common = {"split": pattern, "images": metrics["images"], "resolution": resolution, "resize": RESIZE,
              "device": args.device}
    protocol = {
        "psnr": {**common, "implementation": "vistok.eval.recon: [0,1] pixels, per image, mean"},
        "ssim": {**common, "implementation": "torchmetrics SSIM, gaussian 11 / 1.5, per image, mean"},
        "codebook": {**common, "implementation": "vistok.eval.tokens: usage, perplexity over the whole set"},
        "lpips": {**common, "implementation": "vistok.losses.perceptual.LPIPS (VGG16 + linear heads, local "
                  "weights), batch means weighted by batch size"}
        if perceptual else "not computed: no --lpips-vgg/--lpips-heads",
        "rfid": {**common, **rfid.protocol()} if rfid else "not computed: no --fid-weights",
        "probe_accuracy": {**common, **probe.protocol()} if probe else "not computed: --no-probe",
    }
    return protocol


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from vistok import load_tokenizer
    from vistok.atomic import write_text
    from vistok.data.wds import expand_urls, make_val_loader
    from vistok.eval.fid import RFID
    from vistok.eval.tokenizer_eval import evaluate_tokenizer

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pattern = args.data.removeprefix("data=")
    try:  # an export from elsewhere is checked before anything is built (vistok.untrusted)
        tokenizer = load_tokenizer(args.tokenizer)
    except (FileNotFoundError, ValueError) as error:
        print(f"evaluate failed: {error}", file=sys.stderr)
        return 2
    resolution = args.resolution or tokenizer.resolution
    loader = make_val_loader(expand_urls(pattern), args.batch_size, resolution, 0, 1, 0)
    perceptual = None
    if args.lpips_vgg or args.lpips_heads:
        from vistok.losses.perceptual import LPIPS

        perceptual = LPIPS(args.lpips_vgg or "", args.lpips_heads or "")
    else:
        print("lpips skipped: pass --lpips-vgg and --lpips-heads (local weight files) to compute it")
    rfid = RFID(args.fid_weights) if args.fid_weights else None
    if rfid is None:
        print("rfid skipped: pass --fid-weights (a local feature-extractor weight file) to compute it")
    probe = build_probe(args, tokenizer, resolution)
    metrics = evaluate_tokenizer(tokenizer, loader, perceptual, rfid, probe, device=args.device)
    protocol = build_protocol(args, pattern, resolution, metrics, perceptual, rfid, probe)
    out = args.out or args.tokenizer / "eval"
    write_text(out / "eval.json", json.dumps({"metrics": metrics, "protocol": protocol}, indent=2))
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    write_text(out / "eval.md", f"| metric | value |\n| --- | --- |\n{rows}\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
