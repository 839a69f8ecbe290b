"""Preemption and time limits on SLURM: save a checkpoint, requeue, resume from the run directory.

Who sends what:
- Under Hydra's slurm launcher (submitit), SLURM sends `SIG$SUBMITIT_PREEMPT_SIGNAL` (USR2 unless set)
  `signal_delay_s` before the time limit, and a user or a preempting scheduler can send it any time
  (`scancel --signal=USR2 JOB`). submitit's handler re-pickles the Hydra job and requeues it, but it saves
  no Lightning checkpoint, so on its own the restarted job would train from the stage's last periodic
  checkpoint, or from scratch.
- Under a plain `sbatch` + `srun python train.py ...`, it is SIGUSR1 (Lightning's SLURM requeue signal;
  ask for it with `#SBATCH --signal=USR1@90`). Lightning's own handler would save `hpc_ckpt_<n>.ckpt`
  at the run directory's root, where the per-stage resume does not look, and a later stage would load
  it; vistok installs its handler first, and Lightning leaves a signal that already has one alone.

The handler only records the signal: a checkpoint written from inside it could catch the optimiser
half-way through an update. At the end of the next training batch every rank learns whether any rank was
signalled (one all-reduce), all ranks save `<stage dir>/preempted.ckpt` together, then rank 0 requeues
the job (submitit's handler, or `scontrol requeue`) and exits. The restarted job runs the same command in
the same run directory, and the stage resumes from its newest checkpoint, which is that one
(vistok/training/checkpointing.py). A signal that comes outside training (data preparation, validation,
export) requeues at once: there is no step to save, and the restart resumes from what is on disk.

A plain SIGTERM (`kill PID`, `timeout`, a scheduler's stop) ends the run in every state. Inside `fit`,
Lightning's handler stops training at the end of the current batch; while the main thread waits for a batch
(`vistok.data.wds.waiting_for_data`: a loader stuck on a hung shard may never deliver one) and outside
Lightning, `StopRequested` is raised at once. Either way the run exits non-zero and the stage is not marked
done, so the same command resumes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vistok.data.wds import kill_shard_commands, waiting_for_data

PREEMPTED_CHECKPOINT = "preempted.ckpt"
_REQUEUE_WAIT_S = 120  # other ranks wait this long for SLURM to stop them after rank 0 requeued


class _State:
    """Process-wide: signal handlers are per process, and a run fits its stages one after the other."""

    installed: signal.Signals | None = None
    previous = None  # the handler vistok replaced (submitit's requeue handler under the launcher)
    received: int | None = None  # the signal number, once received during training
    training = False
    stop_handler = False  # vistok's SIGTERM handler is installed


_STATE = _State()


def under_submitit() -> bool:
    return "SUBMITIT_FOLDER" in os.environ  # set by submitit in the job process


def preemption_signal() -> signal.Signals | None:
    """The signal that announces preemption or the time limit here; None outside SLURM."""
    if under_submitit():
        name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        if not hasattr(signal, name):
            raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL={name[3:]!r} is not a signal name (e.g. USR2)")
        return signal.Signals[name]
    if "SLURM_JOB_ID" in os.environ:
        return signal.SIGUSR1
    return None


class StopRequested(SIGTERMException):
    """SIGTERM acted on at once. A SystemExit (Lightning's SIGTERMException, which the runner turns into the
    stage's message) whose code is the message, so the process exits with status 1, never 0."""


def install_stop_handler() -> bool:
    """Make SIGTERM stop this process in every state (idempotent). Returns whether vistok's handler is set.

    A handler someone else installed is left alone: under submitit, SIGTERM is deliberately ignored so that
    the preemption signal's requeue can finish.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm and current not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    _STATE.stop_handler = True
    return True


def _on_sigterm(signum: int, frame) -> None:
    if waiting_for_data():
        kill_shard_commands()  # else closing a hung `pipe:` shard would wait for its command
        raise StopRequested("stopped by SIGTERM while waiting for the data loader's next batch")
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        return  # called by Lightning's handler, which stops training at the end of the current batch
    raise StopRequested("stopped by SIGTERM")


def install_preemption_handler() -> signal.Signals | None:
    """Take over the preemption signal of this process (idempotent), and SIGTERM (`install_stop_handler`).

    Returns the preemption signal, or None outside SLURM.
    """
    install_stop_handler()
    signum = preemption_signal()
    if signum is None or _STATE.installed == signum:
        return _STATE.installed
    if threading.current_thread() is not threading.main_thread():
        print("preemption: not in the main thread, where signal handlers live: no checkpoint on preemption")
        return None
    _STATE.previous = signal.getsignal(signum)
    signal.signal(signum, _on_signal)
    _STATE.installed, _STATE.received = signum, None
    print(f"preemption: on {signum.name} a checkpoint is saved, then the job is requeued", flush=True)
    return signum


def uninstall_preemption_handler() -> None:
    """Put the replaced handlers back (tests; a process that trains more than one run)."""
    if _STATE.stop_handler and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _STATE.stop_handler = False
    if _STATE.installed is not None:
        signal.signal(_STATE.installed, _STATE.previous or signal.SIG_DFL)
    _STATE.installed, _STATE.previous, _STATE.received, _STATE.training = None, None, None, False


def _on_signal(signum: int, frame) -> None:
    if _STATE.training:
        _STATE.received = signum  # acted on at the end of the current batch
        return
    print(f"preemption: {signal.Signals(signum).name} outside training: requeueing without a new checkpoint",
          flush=True)
    _requeue(signum, frame)


def _global_rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0"))


def _requeue(signum: int, frame) -> None:
    """Requeue this job and exit (rank 0); other ranks return and are stopped by SLURM."""
    if callable(_STATE.previous):
        _STATE.previous(signum, frame)  # submitit: pickle the Hydra job, requeue it, exit on rank 0
        return
    if _global_rank() != 0:
        return
    job = os.environ["SLURM_JOB_ID"]
    if "SLURM_ARRAY_JOB_ID" in os.environ:  # an array task is requeued by its array id
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        sys.exit(f"preemption: `scontrol requeue {job}` failed: {result.stderr.strip()} "
                 "(was the job submitted with --requeue?)")
    print(f"preemption: requeued job {job}", flush=True)
    sys.exit(-1)


class PreemptionCheckpoint(Callback):
    """On a recorded preemption signal: all ranks save `<stage_dir>/preempted.ckpt`, then requeue."""

    def __init__(self, stage_dir: Path | str):
        self.stage_dir = Path(stage_dir)

    def on_train_start(self, trainer, pl_module) -> None:
        _STATE.training = True

    def on_train_end(self, trainer, pl_module) -> None:
        _STATE.training = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        _STATE.training = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if _STATE.installed is None:
            return  # not on SLURM: no collective per step
        requested = trainer.strategy.reduce_boolean_decision(_STATE.received is not None, all=False)
        if not requested:
            return
        path = self.stage_dir / PREEMPTED_CHECKPOINT
        trainer.save_checkpoint(path)  # every rank takes part (sharded states are saved by all)
        print(f"preemption: saved {path} at global step {trainer.global_step}", flush=True)
        _STATE.training = False
        _requeue(_STATE.received or _STATE.installed, None)
        _wait_to_be_stopped()


def _wait_to_be_stopped() -> None:
    """Ranks other than 0 stay out of collectives until SLURM stops the requeued job."""
    deadline = time.monotonic() + _REQUEUE_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(1)
    sys.exit("preemption: the job was not stopped after its requeue; exiting")
