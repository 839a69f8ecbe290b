"""FSDP2 vs DDP per-rank memory: steady-state RSS of a >= 50M-parameter joint model trained at 2 ranks."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from scripts.benchmarks.common import ROOT
from scripts.benchmarks.timing import verdict

TARGET = 0.6

# A ~50M-parameter Llama (12 blocks of hidden 512: 16 * 512^2 * 12 = 50.3M) joined to the mini tokenizer.
LARGE_LLM = ["llm.build.hidden_size=512", "llm.build.num_layers=12", "llm.build.num_heads=8"]
# glibc keeps freed blocks below the mmap threshold in its heap, hiding what sharding frees (RSS would
# stay at the peak of the first all-gather); a low threshold returns them to the system.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


class RSSProbe(Callback):
    """Records this rank's resident set size after every training step of `stage` into `out_dir`."""

    def __init__(self, out_dir: str, stage: str = "ett"):
        self.out_dir, self.stage = Path(out_dir), stage

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if pl_module.stage.name != self.stage:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rss_rank{trainer.global_rank}.txt", "a") as handle:
            handle.write(f"{_rss_mb():.1f}\n")

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            params = sum(p.numel() for p in pl_module.parameters())  # a DTensor shard counts its full size
            (self.out_dir / "params.txt").parent.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "params.txt").write_text(str(params))


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _train(strategy: str, out_dir: Path, steps: int, timeout: int) -> dict:
    """One 2-rank joint run under `strategy`; returns per-rank steady-state RSS (median of later steps)."""
    probe = out_dir / "probe"
    cmd = [sys.executable, str(ROOT / "train.py"), f"trainer={strategy}", "experiment=ett_mini", "debug=tiny",
           *LARGE_LLM, f"max_steps_per_stage={steps}", "logger=csv", "export.enabled=false",
           "+callbacks.rss._target_=scripts.benchmarks.memory.RSSProbe", f"+callbacks.rss.out_dir={probe}",
           f"hydra.run.dir={out_dir / 'run'}"]
    env = {**os.environ, **MALLOC_ENV, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    start = time.time()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{strategy} run failed:\n{(result.stdout + result.stderr)[-3000:]}")
    ranks = {}
    for rank in (0, 1):
        values = [float(v) for v in (probe / f"rss_rank{rank}.txt").read_text().split()]
        ranks[rank] = statistics.median(values[len(values) // 2:])  # skip the warm-up steps
    return {"rss_mb": ranks, "params": int((probe / "params.txt").read_text()), "wall_s": time.time() - start}


def fsdp_memory(steps: int = 8, timeout: int = 1200) -> dict:
    with tempfile.TemporaryDirectory(prefix="vistok-bench-") as tmp:
        runs = {s: _train(s, Path(tmp) / s, steps, timeout) for s in ("ddp", "fsdp")}
    ddp, fsdp = (max(runs[s]["rss_mb"].values()) for s in ("ddp", "fsdp"))
    result = {"params": runs["fsdp"]["params"], "ddp_rss_mb": runs["ddp"]["rss_mb"],
              "fsdp_rss_mb": runs["fsdp"]["rss_mb"], "fsdp_over_ddp": fsdp / ddp,
              "wall_s": {s: round(r["wall_s"], 1) for s, r in runs.items()}}
    print(f"fsdp_memory: {result['params'] / 1e6:.1f}M parameters, 2 ranks, steady-state RSS per rank (MB)")
    for strategy in ("ddp", "fsdp"):
        per_rank = ", ".join(f"rank {r}: {v:.0f}" for r, v in runs[strategy]["rss_mb"].items())
        print(f"  {strategy:5s} {per_rank}   ({runs[strategy]['wall_s']:.0f} s)")
    print(f"  FSDP / DDP = {result['fsdp_over_ddp']:.2f} (largest rank of each) "
          f"{verdict(result['fsdp_over_ddp'], TARGET, higher_is_better=False)}")
    return result
