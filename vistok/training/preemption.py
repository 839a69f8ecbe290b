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

PREEMPTED_CHECKPOINT = "preempted.ckpt"
_REQUEUE_WAIT_S = 120  # other ranks wait this long for SLURM to stop them after rank 0 requeued


class _State:
    """Process-wide: signal handlers are per process, and a run fits its stages one after the other."""

    installed: signal.Signals | None = None
    previous = None  # the handler vistok replaced (submitit's requeue handler under the launcher)
    received: int | None = None  # the signal number, once received during training
    training = False


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


def install_preemption_handler() -> signal.Signals | None:
    """Take over the preemption signal of this process (idempotent). Returns it, or None outside SLURM."""
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
    """Put the replaced handler back (tests; a process that trains more than one run)."""
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
