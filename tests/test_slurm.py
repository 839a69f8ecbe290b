"""Sweeps, multi-node DDP, preemption and failures on a real (local, two-node) SLURM cluster.

The cluster comes from scripts/slurm/local_cluster.sh (see tests/slurm_cluster.py); every wait is bounded,
and the drivers run under `timeout` so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import torch
from slurm_cluster import (  # noqa: F401 - slurm_cluster is a fixture
    ROOT, job_log, release, results, slurm, slurm_cluster, start_driver, submitted_jobs, wait_for)

pytestmark = pytest.mark.slurm
TINY = ["experiment=vq_mini", "debug=tiny"]


def _finish(driver, limit_s: float) -> int:
    try:
        return driver.wait(timeout=limit_s)
    except Exception:
        driver.kill()
        raise


def test_sweep_returns_metrics_to_the_driver(slurm_cluster, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    log = tmp_path / "driver.log"
    driver = start_driver([*TINY, "trainer.max_steps=3", "seed=1,2", f"hydra.sweep.dir={sweep}"],
                          slurm_cluster, log, limit_s=300)
    assert _finish(driver, 310) == 0, log.read_text()[-3000:]
    outcomes = results(sweep)
    assert len(outcomes) == 2, f"expected two job results, found {len(outcomes)}"
    seeds = set()
    for status, job_return in outcomes:
        assert status == "success"
        assert set(job_return.return_value) >= {"psnr", "codebook_usage"}
        seeds |= {o for o in job_return.overrides if o.startswith("seed=")}
    assert seeds == {"seed=1", "seed=2"}
    for num in (0, 1):
        assert "psnr" in json.loads((sweep / str(num) / "metrics.json").read_text())["final"]
        last = torch.load(sweep / str(num) / "checkpoints" / "tokenizer" / "last.ckpt", weights_only=True)
        assert last["global_step"] == 3  # trainer.max_steps reached the jobs


def test_two_node_ddp_job_trains(slurm_cluster, cache_dir, tmp_path):
    sweep = tmp_path / "ddp"
    log = tmp_path / "driver.log"
    driver = start_driver([*TINY, "trainer=ddp", "trainer.devices=1", "trainer.num_nodes=2",
                           f"hydra.sweep.dir={sweep}"], slurm_cluster, log, limit_s=400)
    assert _finish(driver, 410) == 0, log.read_text()[-3000:] + job_log(sweep)[-3000:]
    [(status, job_return)] = results(sweep)
    assert status == "success" and "psnr" in job_return.return_value
    for rank in (0, 1):  # one task per node, each a DDP rank of a world of two
        assert re.search(rf"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2", job_log(sweep, task=rank))
    job = next(sweep.glob(".submitit/*/*_submitted.pkl")).parent.name
    nodes = slurm(slurm_cluster, "sacct", "-j", job, "-X", "-n", "-o", "NodeList%20").split()
    assert nodes == ["n[1-2]"], nodes


def test_preempted_job_saves_requeues_and_resumes(slurm_cluster, cache_dir, tmp_path):
    sweep = tmp_path / "preempt"
    log = tmp_path / "driver.log"
    # Two ranks on two nodes: both must save at the same step, and the rank that does not requeue must wait.
    driver = start_driver([*TINY, "trainer=ddp", "trainer.devices=1", "trainer.num_nodes=2",
                           "max_steps_per_stage=16", "checkpoint_every=3", f"hydra.sweep.dir={sweep}"],
                          slurm_cluster, log, limit_s=500)
    stage_dir = sweep / "0" / "checkpoints" / "tokenizer"
    wait_for("the first periodic checkpoint", lambda: (stage_dir / "step000003.ckpt").exists(), 300, driver)
    [job] = submitted_jobs(sweep)
    slurm(slurm_cluster, "scancel", "--signal=USR2", job)  # what SLURM sends before the time limit
    saved = wait_for("the preemption checkpoint", lambda: re.search(
        r"preemption: saved (\S+) at global step (\d+)", job_log(sweep)), 120, driver)
    assert saved.group(1) == str(stage_dir / "preempted.ckpt")
    step = int(saved.group(2))
    wait_for("the requeued job to be held", lambda: "PENDING" in slurm(
        slurm_cluster, "squeue", "-h", "-j", job, "-o", "%T"), 60, driver)
    release(slurm_cluster, job)
    assert _finish(driver, 400) == 0, log.read_text()[-3000:] + job_log(sweep)[-3000:]
    text = job_log(sweep)
    assert f"resuming stage 'tokenizer' from {stage_dir / 'preempted.ckpt'} at step {step} of the stage " \
           f"(global step {step})" in text
    assert json.loads((sweep / "0" / "metrics.json").read_text())["steps"] == 16
    # wandb: one offline run directory per attempt (offline-run-<time>-<id>), the same run id in both
    runs = sorted(p.name for p in (sweep / "0" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.split("-", 3)[-1] for r in runs}) == 1, runs


def test_time_limit_requeues_until_the_run_finishes(slurm_cluster, cache_dir, tmp_path):
    """A 2-minute limit with the signal 30 s before it: SLURM itself signals every attempt."""
    sweep = tmp_path / "limit"
    log = tmp_path / "driver.log"
    # SLURM may send the warning signal up to 60 s early (its time-limit checks are periodic), so here it
    # lands 30-90 s into each attempt. It must not land before submitit has loaded the job and installed its
    # USR2 handler (seconds of imports), or the attempt dies FAILED: a 1-minute limit with a 40 s delay put
    # the signal at 0-20 s and lost that race on a busy machine. 48 steps of at least 2 s each outlast 90 s,
    # so at least one time-limit requeue happens; a busy machine may need several.
    driver = start_driver([*TINY, "max_steps_per_stage=48", "checkpoint_every=3",
                           "+callbacks.slow._target_=tests.slurm_cluster.SlowSteps", "+callbacks.slow.seconds=2",
                           "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
                           "hydra.launcher.max_num_timeout=100", f"hydra.sweep.dir={sweep}"],
                          slurm_cluster, log, limit_s=900)
    [job] = wait_for("the job to be submitted", lambda: submitted_jobs(sweep), 120, driver)

    released_at = [0.0]

    def finished_or_released():
        if driver.poll() is not None:
            return True
        # The requeue hold; a job released less than 10 s ago still shows it until its new begin time.
        held = "BeginTime" in slurm(slurm_cluster, "squeue", "-h", "-j", job, "-o", "%r")
        if held and time.monotonic() - released_at[0] > 10:
            release(slurm_cluster, job)
            released_at[0] = time.monotonic()
        return False

    wait_for("the driver to return", finished_or_released, 890)
    assert driver.returncode == 0, log.read_text()[-3000:] + job_log(sweep)[-3000:]
    text = job_log(sweep)
    saved = [int(s) for s in re.findall(r"preemption: saved \S+ at global step (\d+)", text)]
    resumed = [int(s) for s in re.findall(r"preempted.ckpt at step \d+ of the stage \(global step (\d+)\)",
                                          text)]
    # Every save is resumed from at the same step; an attempt signalled before its first step saves nothing
    # and its successor resumes from the same checkpoint again.
    assert saved and set(resumed) == set(saved) and resumed == sorted(resumed), (saved, resumed)
    assert "this job is timed-out" in text


def test_killed_job_fails_the_driver_with_its_state(slurm_cluster, cache_dir, tmp_path):
    sweep = tmp_path / "killed"
    log = tmp_path / "driver.log"
    driver = start_driver([*TINY, "max_steps_per_stage=1000", f"hydra.sweep.dir={sweep}"],
                          slurm_cluster, log, limit_s=300)
    [job] = wait_for("the job to be submitted", lambda: submitted_jobs(sweep), 120, driver)
    wait_for("the job to start training", lambda: "preemption: on SIGUSR2" in job_log(sweep), 120, driver)
    start = time.monotonic()
    slurm(slurm_cluster, "scancel", "--signal=KILL", job)  # SIGKILL: no handler, no result pickle
    code = _finish(driver, 200)
    output = log.read_text()
    assert code != 0, output[-3000:]
    assert "UncompletedJobError" in output and re.search(r"state: (FAILED|CANCELLED)", output), output[-3000:]
    assert time.monotonic() - start < 120, "the driver took too long to notice the killed job"


def test_reproduce_submits_a_tables_rows_as_one_sweep(slurm_cluster, cache_dir, tmp_path):
    out = tmp_path / "table"
    rows = "binary1d_mini_bits4,binary1d_mini"
    cmd = ["timeout", "-s", "KILL", "500", sys.executable, "-m", "scripts.reproduce", "instella_bits",
           "--scale", "smoke", "--seeds", "1", "--rows", rows, "--launcher", "slurm",
           "--launcher-config", "slurm_local", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=slurm_cluster, capture_output=True, text=True, timeout=510)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("sweep  ") == 1, result.stdout  # both rows in one sweep
    [array] = {p.parent.name.split("_")[0] for p in out.glob(".submitit/*/*_submitted.pkl")}
    assert len(list(out.glob(f".submitit/{array}_*"))) == 2  # one array job, a task per row
    means = json.loads((out / "instella_bits.json").read_text())["means"]
    assert set(means) == set(rows.split(","))


def test_plain_sbatch_job_requeues_on_lightnings_signal(slurm_cluster, cache_dir, tmp_path):
    """Without submitit (`sbatch` + `srun python train.py`), SIGUSR1 saves, `scontrol requeue`s, resumes."""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --job-name=plain --nodes=1 --ntasks-per-node=1 --time=8 --requeue\n"
        f"#SBATCH --open-mode=append --output={out}\n"
        f"srun {sys.executable} {ROOT / 'train.py'} {' '.join(TINY)} max_steps_per_stage=16 "
        f"checkpoint_every=3 run_name=plain hydra.run.dir={run_dir}\n")
    job = slurm(slurm_cluster, "sbatch", "--parsable", str(script)).strip()
    stage_dir = run_dir / "checkpoints" / "tokenizer"
    try:
        wait_for("the first periodic checkpoint", lambda: (stage_dir / "step000003.ckpt").exists(), 300)
        slurm(slurm_cluster, "scancel", "--signal=USR1", job)
        saved = wait_for("the preemption checkpoint", lambda: out.exists() and re.search(
            r"preemption: saved \S+ at global step (\d+)", out.read_text(errors="replace")), 120)
        wait_for("the requeued job to be held", lambda: "PENDING" in slurm(
            slurm_cluster, "squeue", "-h", "-j", job, "-o", "%T"), 60)
        release(slurm_cluster, job)

        def finished():
            if (run_dir / "metrics.json").exists():
                return True
            state = subprocess.run(["timeout", "30", "squeue", "-h", "-j", job, "-o", "%T"], env=slurm_cluster,
                                   capture_output=True, text=True).stdout.strip()
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL"):
                pytest.fail(f"job {job} is {state} without finishing the run:\n{out.read_text()[-3000:]}")
            return False

        wait_for("the job to finish", finished, 300)
    finally:
        subprocess.run(["timeout", "30", "scancel", job], env=slurm_cluster)
    step = saved.group(1)
    resumed = f"from {stage_dir / 'preempted.ckpt'} at step {step} of the stage (global step {step})"
    assert resumed in out.read_text()
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue handler stayed out
