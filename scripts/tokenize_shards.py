"""Pre-tokenise image shards for autoregressive training.

    python -m scripts.tokenize_shards TOKENIZER_DIR --input PATTERN --output DIR [--num-tokens K]

Reads img2dataset-style shards (any pattern vistok reads) and writes webdataset shards
`tokens-NNNNN.tar` holding, per sample, `<key>.tokens.npy` (int32 code ids, shape (N, C)), `<key>.txt`
(the caption) and `<key>.json` (key, num_tokens, codebook sizes, source). Reports images/s.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", type=Path)
    parser.add_argument("--input", required=True, help="shard pattern: glob, directory, brace pattern")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--num-tokens", type=int, default=None, help="flexible-length tokenizers: keep k tokens")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples-per-shard", type=int, default=10000)
    parser.add_argument("--resolution", type=int, default=None, help="default: the tokenizer's own")
    return parser.parse_args(argv)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class ShardSink:
    """Rolls over to a new tar every `per_shard` samples."""

    def __init__(self, out: Path, per_shard: int):
        import webdataset as wds

        out.mkdir(parents=True, exist_ok=True)
        self.writer = wds.ShardWriter(str(out / "tokens-%05d.tar"), maxcount=per_shard, verbose=0)
        self.count = 0

    def write(self, key: str, tokens: np.ndarray, caption: str, meta: dict) -> None:
        self.writer.write({"__key__": key, "tokens.npy": _npy(tokens), "txt": caption.encode(),
                           "json": json.dumps(meta).encode()})
        self.count += 1

    def close(self) -> None:
        self.writer.close()


def main(argv: list[str] | None = None) -> int:
    import torch
    from tqdm import tqdm

    from vistok import load_tokenizer
    from vistok.data.wds import expand_urls, make_val_loader

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:  # an export from elsewhere is checked before anything is built (vistok.untrusted)
        tokenizer = load_tokenizer(args.tokenizer)
    except (FileNotFoundError, ValueError) as error:
        print(f"tokenize failed: {error}", file=sys.stderr)
        return 2
    resolution = args.resolution or tokenizer.resolution
    loader = make_val_loader(expand_urls(args.input), args.batch_size, resolution, 0, 1, 0)
    sink, skipped, start = ShardSink(args.output, args.samples_per_shard), 0, time.time()
    with torch.no_grad():
        for batch in tqdm(loader, desc="tokenize", unit="batch"):
            skipped += int(batch["skipped"])
            out = tokenizer.encode(batch["image"], num_tokens=args.num_tokens)
            for i, key in enumerate(batch["key"]):
                keep = out.mask[i] if out.mask is not None else slice(None)
                tokens = out.indices[i][keep].cpu().numpy().astype(np.int32)  # (N, C)
                meta = {"key": key, "num_tokens": int(tokens.shape[0]), "codebook_sizes": list(tokenizer.codebook_sizes),
                        "tokenizer": str(args.tokenizer)}
                sink.write(key, tokens, batch["caption"][i], meta)
    sink.close()
    seconds = time.time() - start
    print(f"tokenized {sink.count} images in {seconds:.1f} s ({sink.count / max(seconds, 1e-9):.1f} images/s), "
          f"skipped {skipped} corrupt samples -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
