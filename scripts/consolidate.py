"""Convert an FSDP2 checkpoint directory into one file: `python -m scripts.consolidate CKPT_DIR [OUT]`.

The file (default `<CKPT_DIR>.consolidated.ckpt`) holds the weights and trainer state, no optimiser; it
loads with `torch.load(..., weights_only=True)` and strictly into a single-process module built from the
run's config. `scripts.export` and `scripts.evaluate` also read checkpoint directories directly.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a distributed checkpoint directory (holds .metadata)")
    parser.add_argument("out", nargs="?", default=None, help="output file (default <checkpoint>.consolidated.ckpt)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from vistok.checkpoint_files import consolidate_checkpoint

    try:
        out = consolidate_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"consolidation failed: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
