"""`scripts.reproduce --launcher slurm`: a table's runs submitted to SLURM as Hydra sweeps.

A Hydra sweep is a Cartesian product, so runs are written as sweeps over `experiment=` and `seed=`:
what depends on the seed (the path of the base run's checkpoint) becomes a `${seed}` interpolation, and
the run directory `<out>/seed<S>/<row>` becomes the sweep's subdir, so the runs land exactly where the
local launcher puts them (and are reused by either). Rows that differ only in their experiment (a
mini/smoke table whose rows share the same stages) are one sweep; rows that differ in more (paper-scale
arms, rows sharing fewer stages) get a sweep each, and every sweep of a phase is submitted at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vistok.reproduce.runner import ROOT, Job

_BY_EXPERIMENT = "${hydra.runtime.choices.experiment}"


@dataclass
class Sweep:
    experiments: list[str]
    seeds: list[int]
    overrides: list[str]  # the same for every run of the sweep; `${seed}` where the seed appears
    subdir: str  # the run directory under the sweep directory (the table's output directory)

    def command(self, out: Path, launcher: str, launcher_args: list[str]) -> list[str]:
        return [sys.executable, str(ROOT / "train.py"), "-m", f"hydra/launcher={launcher}",
                "experiment=" + ",".join(self.experiments), "seed=" + ",".join(map(str, self.seeds)),
                *self.overrides, "logger=csv", f"hydra.sweep.dir={out.resolve()}",
                f"hydra.sweep.subdir={self.subdir}", *launcher_args]


def _value(job: Job, key: str) -> str:
    found = [o.split("=", 1)[1] for o in job.overrides if o.startswith(f"{key}=")]
    if len(found) != 1:
        raise ValueError(f"{job.run_dir}: expected one {key}= override, got {job.overrides}")
    return found[0]


def plan_sweeps(jobs: list[Job], out: Path) -> list[Sweep]:
    """Group `jobs` (all run directories `<out>/seed<S>/<dir>`) into as few product sweeps as possible."""
    groups: dict[tuple, dict[str, set[int]]] = {}
    for job in jobs:
        seed, experiment = int(_value(job, "seed")), _value(job, "experiment")
        relative = job.run_dir.relative_to(out)
        if relative.parent != Path(f"seed{seed}"):
            raise ValueError(f"{job.run_dir} is not <out>/seed{seed}/<run>")
        rest = tuple(o.replace(f"seed{seed}", "seed${seed}") for o in job.overrides
                     if not o.startswith(("seed=", "experiment=")))
        subdir = _BY_EXPERIMENT if relative.name == experiment else relative.name
        groups.setdefault((rest, subdir), {}).setdefault(experiment, set()).add(seed)
    sweeps = []
    for (rest, subdir), seeds_of in groups.items():
        by_seeds: dict[tuple[int, ...], list[str]] = {}  # a product needs the same seeds for each experiment
        for experiment, seeds in seeds_of.items():
            by_seeds.setdefault(tuple(sorted(seeds)), []).append(experiment)
        for seeds, experiments in by_seeds.items():
            sweeps.append(Sweep(sorted(experiments), list(seeds), list(rest), "seed${seed}/" + subdir))
    return sweeps


def submit_all(jobs: list[Job], out: Path, launcher: str, launcher_args: list[str], log) -> None:
    """Submit the runs of `jobs` that are not finished, as sweeps, and wait for all of them."""
    todo = [job for job in jobs if not job.done()]
    for job in jobs:
        if job.done():
            log(f"reuse  {job.run_dir}")
    if not todo:
        return
    for job in todo:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        (job.run_dir / "reproduce.json").write_text(json.dumps({"overrides": job.overrides}, indent=2))
    sweeps = plan_sweeps(todo, out)
    with ThreadPoolExecutor(max_workers=len(sweeps)) as pool:
        for future in [pool.submit(_run_sweep, sweep, out, launcher, launcher_args, log) for sweep in sweeps]:
            future.result()


def _run_sweep(sweep: Sweep, out: Path, launcher: str, launcher_args: list[str], log) -> None:
    cmd = sweep.command(out, launcher, launcher_args)
    log(f"sweep  {' '.join(cmd[2:])}")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"sweep failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout[-2000:]}"
                           f"{result.stderr[-3000:]}")
