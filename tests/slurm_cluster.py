"""The local SLURM cluster as a pytest fixture, plus helpers that poll it with bounded waits."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm" / "local_cluster.sh"


def _slow_steps(seconds: float):
    """A Lightning callback that sleeps after every training step (imported in the jobs as
    `tests.slurm_cluster.SlowSteps`): training then takes a known minimum time on any machine."""
    from lightning.pytorch.callbacks import Callback

    class _SlowSteps(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            time.sleep(seconds)

    return _SlowSteps()


SlowSteps = _slow_steps


def _cannot_install() -> str | None:
    """Why the cluster cannot be installed or started here (None: it can)."""
    if os.geteuid() != 0:  # the daemons run as root (SlurmUser=root) and munged needs /run/munge
        return "the slurm tier needs root to install and start slurm, munge and mariadb"
    if shutil.which("slurmctld") and shutil.which("sbatch") and shutil.which("mariadbd"):
        return None
    if not shutil.which("apt-get"):
        return "the slurm tier installs Debian packages and there is no apt-get"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running two-node cluster (n1, n2; partition debug). Yields the environment its clients need."""
    reason = _cannot_install()
    if reason:
        pytest.skip(reason)
    install = subprocess.run(["timeout", "600", str(SCRIPT), "install"], capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"the slurm packages could not be installed: {install.stderr.strip()[-500:]}")
    root = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["timeout", "120", str(SCRIPT), "start", str(root)], capture_output=True,
                           text=True)
    try:
        assert start.returncode == 0, f"the local cluster did not start:\n{start.stderr[-3000:]}"
        env = {**os.environ, "SLURM_CONF": str(root / "etc" / "slurm.conf")}
        yield env
    finally:
        stop = subprocess.run(["timeout", "120", str(SCRIPT), "stop", str(root)], capture_output=True,
                              text=True)
        assert stop.returncode == 0, f"the local cluster did not stop:\n{stop.stderr[-3000:]}"
        assert not list((root / "run").glob("*.pid")), "a daemon's PID file is left: it may still run"


def slurm(env: dict, *args: str) -> str:
    """Run a Slurm client command (bounded) and return its stdout."""
    result = subprocess.run(["timeout", "30", *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed: {result.stderr}"
    return result.stdout


def release(env: dict, job: str) -> None:
    """Start a requeued job that Slurm holds on its begin time (about two minutes after a requeue).

    Not in the same second as the requeue: slurmd refuses a job credential created in the second it revoked
    the job's previous one ("Killing non-startable batch job: Job credential revoked"), which fails the job.
    """
    slurm(env, "scontrol", "update", f"JobId={job}", "StartTime=now+2")


def start_driver(args: list[str], env: dict, log: Path, limit_s: int) -> subprocess.Popen:
    """`python train.py -m hydra/launcher=slurm_local ARGS` in the background, killed after `limit_s`."""
    cmd = ["timeout", "-s", "KILL", str(limit_s), sys.executable, str(ROOT / "train.py"), "-m",
           "hydra/launcher=slurm_local", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_for(what: str, check, limit_s: float, driver: subprocess.Popen | None = None):
    """Poll `check()` until it returns something truthy; fail after `limit_s` or if the driver exits."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if driver is not None and driver.poll() is not None:
            pytest.fail(f"the driver exited ({driver.returncode}) while waiting for {what}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {limit_s:.0f} s waiting for {what}")


def submitted_jobs(sweep_dir: Path) -> list[str]:
    """Slurm ids of the sweep's jobs (`<array>_<num>`, or `<job>` for a sweep of one), once submitted."""
    return sorted(p.parent.name for p in sweep_dir.glob(".submitit/*/*_submitted.pkl"))


def results(sweep_dir: Path) -> list:
    """The values a sweep's jobs returned to the driver (submitit's result pickles), by job number."""
    outcomes = []
    # <array>_<num>/<array>_<num>_0_result.pkl for a sweep of several jobs, <job>/<job>_0_result.pkl for one
    for path in sorted(sweep_dir.glob(".submitit/*/*_0_result.pkl")):
        with open(path, "rb") as handle:
            outcomes.append(pickle.load(handle))
    return outcomes


def job_log(sweep_dir: Path, task: int = 0) -> str:
    """Everything the sweep's jobs printed, task `task` of each job."""
    logs = sorted(sweep_dir.glob(f".submitit/*/*_{task}_log.*"))
    return "\n".join(p.read_text(errors="replace") for p in logs)
