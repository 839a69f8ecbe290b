"""Import time of `vistok.load_tokenizer` (vs importing torch alone) and the default main job's wall time."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from scripts.benchmarks.common import ROOT

MAIN_JOB_TARGET_S = 600  # `python train.py` on a 2-core CPU


def _import_seconds(statement: str, repeats: int) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  cwd=ROOT).stdout) for _ in range(repeats)]
    return statistics.median(times)


def import_time(repeats: int = 5) -> dict:
    torch_s = _import_seconds("import torch", repeats)
    vistok_s = _import_seconds("from vistok import load_tokenizer", repeats)
    result = {"torch_import_s": torch_s, "load_tokenizer_import_s": vistok_s, "ratio": vistok_s / torch_s}
    print(f"import_time: `from vistok import load_tokenizer` {vistok_s:.2f} s vs `import torch` {torch_s:.2f} s "
          f"(ratio {result['ratio']:.2f}; fresh processes, median of {repeats})")
    return result


def main_job(timeout: int = 3600, device: str = "cpu") -> dict:
    """`python train.py` as the README runs it (ett_mini on CPU; `trainer=gpu` on CUDA), in a temp run dir."""
    extra = ["trainer=gpu"] if device.startswith("cuda") else []
    with tempfile.TemporaryDirectory(prefix="vistok-main-") as run_dir:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(ROOT / "train.py"), *extra, f"hydra.run.dir={run_dir}"],
                                cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True,
                                text=True, timeout=timeout)
        wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"python train.py failed:\n{(result.stdout + result.stderr)[-3000:]}")
    ok = "ok" if wall <= MAIN_JOB_TARGET_S else "MISS"
    command = " ".join(["python train.py", *extra])
    print(f"main_job: `{command}` took {wall / 60:.1f} min {ok} (target <= {MAIN_JOB_TARGET_S / 60:.0f} min)")
    return {"wall_s": wall, "device": device}
