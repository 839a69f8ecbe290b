"""Benchmarks, measured side by side in one run: `python -m scripts.bench [NAME ...] [--quick] [--json FILE]`.

Performance targets live here, not in timed tests: each benchmark prints its line (value, target, ok/MISS)
and returns a dict; `--json` writes them all. Ratios against a baseline measured in the same process are
what to read: absolute times on a shared machine are noise.

    step_overhead      vistok training step (Lightning + joint module) vs a bare PyTorch loop   <= 1.05
    data_pipeline      vistok shard pipeline vs raw webdataset decoding; headroom over training  >= 0.9, >= 10x
    quantizer_adapter  vistok's VectorQuantizer vs vector-quantize-pytorch called directly      <= 1.03
    fsdp_memory        FSDP2 vs DDP steady-state RSS per rank, 51M-parameter joint model, 2 ranks  <= 0.6
    import_time        `from vistok import load_tokenizer` vs `import torch`
    main_job           `python train.py` wall time                                               <= 10 min
    generation         text-to-image tokens/s with the KV cache vs the full re-run (1,024 tokens)  >= 10x
                       and vs Hugging Face `generate` on the same LLM (seconds per token)         <= 1.2

`--quick` leaves out the long ones (fsdp_memory, main_job: tens of minutes on 2 cores; generation: minutes).
`--device cuda` runs step_overhead and main_job (`trainer=gpu`) on the GPU; the others measure CPU costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LONG = ("fsdp_memory", "main_job", "generation")
ON_DEVICE = ("step_overhead", "main_job")  # the benchmarks that take `device=`


def _benchmarks() -> dict:
    from scripts.benchmarks.data import data_pipeline
    from scripts.benchmarks.generation import generation
    from scripts.benchmarks.memory import fsdp_memory
    from scripts.benchmarks.quantizer import quantizer_adapter
    from scripts.benchmarks.startup import import_time, main_job
    from scripts.benchmarks.step import step_overhead

    return {"step_overhead": step_overhead, "data_pipeline": data_pipeline, "quantizer_adapter": quantizer_adapter,
            "fsdp_memory": fsdp_memory, "import_time": import_time, "main_job": main_job,
            "generation": generation}


def run(names: list[str], device: str = "cpu") -> dict:
    benchmarks, results = _benchmarks(), {}
    for name in names:
        kwargs = {"device": device} if name in ON_DEVICE else {}
        if name == "data_pipeline" and "step_overhead" in results:  # headroom over what training consumes
            kwargs["train_step_s"] = results["step_overhead"]["vistok_step_s"]
        results[name] = benchmarks[name](**kwargs)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"leave out {', '.join(LONG)}")
    parser.add_argument("--json", dest="json_out", help="write the results as JSON here")
    parser.add_argument("--device", default="cpu", help=f"cpu or cuda[:N], for {', '.join(ON_DEVICE)}")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    known = list(_benchmarks())
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {known}")
    names = args.names or [n for n in known if not (args.quick and n in LONG)]
    if args.device != "cpu":
        import torch

        if not args.device.startswith("cuda") or not torch.cuda.is_available():
            parser.error(f"--device {args.device}: only cpu, or cuda[:N] on a machine where CUDA is available")
    results = run(names, args.device)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
