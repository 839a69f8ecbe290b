"""Export a trained tokenizer: `python -m scripts.export RUN_DIR_OR_CKPT OUT_DIR [--format vistok|diffusers]
[--overwrite]`.

vistok: model.safetensors + config.yaml/config.json + meta.json + model card; loads anywhere with
`vistok.load_tokenizer(OUT_DIR)` (no Lightning, no Hydra app). diffusers: a `diffusers.VQModel` directory
(`VQModel.from_pretrained`), for a VQ tokenizer built from diffusers blocks with one Euclidean codebook.

OUT_DIR must be new (or an empty directory). An earlier export there is replaced, as a whole, only with
--overwrite; anything else (a directory holding other files, a file, a symlink, the current directory or one
above it) is refused with exit code 2 and left as it was. The run directory's config is checked like any
config from elsewhere (vistok.untrusted): only vistok's own tokenizer classes are built from it.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a run directory (its last finished stage) or a .ckpt inside one")
    parser.add_argument("out_dir")
    parser.add_argument("--format", choices=["vistok", "diffusers"], default="vistok")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from vistok.training.artifacts import export_run

    try:
        out = export_run(args.source, args.out_dir, args.format, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 2
    print(f"exported tokenizer to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
