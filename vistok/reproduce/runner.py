"""Run (or reuse) the training runs behind a paper table, then summarise them.

Rows of a table share their leading stages (tokenizer pre-training, alignment): those are trained once
per seed in a `base` run and every row starts from its checkpoint with `init_from`, so all rows see the
same steps and the same starting point, and the shared stages are not paid for five times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vistok.reproduce.tables import Row, Table

ROOT = Path(__file__).resolve().parents[2]
SCALE_OVERRIDES = {
    "smoke": ["debug=tiny", "llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"],
    "mini": [],
    "paper": [],
}


@dataclass
class Job:
    run_dir: Path
    overrides: list[str]
    stages: tuple[str, ...]  # stages this run must have finished to count as done

    def done(self) -> bool:
        spec = self.run_dir / "reproduce.json"
        if not spec.exists() or json.loads(spec.read_text()).get("overrides") != self.overrides:
            return False
        return all((self.run_dir / "checkpoints" / s / "done").exists() for s in self.stages)


def _experiment(row: Row | None, scale: str, table: Table) -> list[str]:
    if scale == "paper":
        if row is not None and row.paper_experiment:  # a control of another family has its own paper config
            return [f"experiment={row.paper_experiment}", *row.arm]
        return [f"experiment={table.paper_base}", *(row.arm if row else [])]
    return [f"experiment={row.experiment if row else table.base_experiment}"]


def plan(table: Table, scale: str, seeds: int, out: Path, all_stages: tuple[str, ...],
         user_overrides: list[str] = ()) -> tuple[list[Job], dict]:
    """Base jobs (shared stages per seed) and row jobs (the rest, from the base checkpoints).

    `user_overrides` (e.g. `trainer=gpu`) go to every run, after the table's own.
    """
    data = table.data if scale != "paper" else ()
    extra = [*(table.scale_overrides or SCALE_OVERRIDES)[scale], *data, *user_overrides]
    if scale == "paper" and table.paper_stages is not None:
        all_stages = table.paper_stages  # the paper base's stages (pre-training comes in with init_from)

    def shared_of(row: Row) -> tuple[str, ...]:
        return tuple(s for s in row.shared if s in all_stages)

    shared = max((shared_of(row) for row in table.rows), key=len)
    bases, rows = [], {}
    for seed in range(seeds):
        base_dir = out / f"seed{seed}" / "base"
        if shared:  # rows that share nothing (e.g. different tokenizers) each train from scratch
            dropped = [f"stages.{s}=null" for s in all_stages if s not in shared]
            base = [*_experiment(None, scale, table), *extra, f"seed={seed}", *dropped, *table.base_overrides]
            bases.append(Job(base_dir, base, shared))
        for row in table.rows:
            start, row_shared = [], shared_of(row)
            if row_shared:
                init = base_dir / "checkpoints" / row_shared[-1] / "last.ckpt"
                start = [*(f"stages.{s}=null" for s in row_shared), f"init_from={init}"]
            overrides = [*_experiment(row, scale, table), *extra, f"seed={seed}", *start]
            remaining = tuple(s for s in all_stages if s not in row_shared)
            rows.setdefault(row.experiment, []).append(Job(out / f"seed{seed}" / row.experiment, overrides, remaining))
    return bases, rows


def run_job(job: Job, threads: int, log) -> None:
    if job.done():
        log(f"reuse  {job.run_dir}")
        return
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "reproduce.json").write_text(json.dumps({"overrides": job.overrides}, indent=2))
    # `--set num_threads=N` wins: beside other jobs on the same cores, fewer threads per run go faster
    pinned = any(o.startswith("num_threads=") for o in job.overrides)
    cmd = [sys.executable, str(ROOT / "train.py"), *job.overrides, *([] if pinned else [f"num_threads={threads}"]),
           f"hydra.run.dir={job.run_dir}", "logger=csv"]
    log(f"run    {job.run_dir}  ({' '.join(job.overrides)})")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    with open(job.run_dir / "stdout.log", "w") as stdout:
        result = subprocess.run(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = (job.run_dir / "stdout.log").read_text()[-2000:]
        raise RuntimeError(f"run failed ({result.returncode}): {job.run_dir}\n{tail}")


def run_all(jobs: list[Job], parallel: int, log) -> None:
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(run_job, job, threads, log) for job in jobs]:
            future.result()


def collect(rows: dict[str, list[Job]]) -> dict[str, list[dict]]:
    return {name: [json.loads((j.run_dir / "metrics.json").read_text())["final"] for j in jobs]
            for name, jobs in rows.items()}
