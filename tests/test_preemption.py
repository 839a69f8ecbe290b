"""Preemption handling, stable run names and the slurm launcher config, without a cluster (fast, CPU)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from vistok.config import ConfigError, check_run_name
from vistok.training import preemption
from vistok.training.run_names import WANDB_LOGGER, logger_overrides, run_id


@pytest.fixture
def submitit_job(monkeypatch):
    """This process as a submitit job whose own requeue handler is a recorder."""
    calls = []
    monkeypatch.setenv("SUBMITIT_FOLDER", "/nonexistent")
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    original = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    yield calls
    preemption.uninstall_preemption_handler()
    signal.signal(signal.SIGUSR2, original)


class _Strategy:
    def __init__(self, others_signalled: bool = False):
        self.others_signalled = others_signalled

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision or self.others_signalled  # `any` over ranks


class _Trainer:
    def __init__(self, strategy=None):
        self.strategy = strategy or _Strategy()
        self.global_step = 7
        self.saved: list[Path] = []

    def save_checkpoint(self, path):
        self.saved.append(Path(path))


def test_no_handler_outside_slurm(monkeypatch):
    for name in ("SUBMITIT_FOLDER", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert preemption.install_preemption_handler() is None
    trainer = _Trainer()
    preemption.PreemptionCheckpoint("unused").on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.saved == []


def test_signal_names(monkeypatch):
    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert preemption.preemption_signal() == signal.SIGUSR1  # Lightning's SLURM requeue signal
    monkeypatch.setenv("SUBMITIT_FOLDER", "/x")
    assert preemption.preemption_signal() == signal.SIGUSR2
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert preemption.preemption_signal() == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "NOPE")
    with pytest.raises(ValueError, match="SUBMITIT_PREEMPT_SIGNAL"):
        preemption.preemption_signal()


def test_signal_in_training_saves_then_hands_over_to_submitit(submitit_job, tmp_path, monkeypatch):
    assert preemption.install_preemption_handler() == signal.SIGUSR2
    callback = preemption.PreemptionCheckpoint(tmp_path)
    trainer = _Trainer()
    monkeypatch.setattr(preemption, "_wait_to_be_stopped", lambda: None)
    callback.on_train_start(trainer, None)
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.saved == [] and submitit_job == []  # nothing before the signal

    os.kill(os.getpid(), signal.SIGUSR2)
    assert submitit_job == []  # the handler only records it: no save, no requeue mid-step
    callback.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.saved == [tmp_path / preemption.PREEMPTED_CHECKPOINT]
    assert submitit_job == [signal.SIGUSR2]  # then submitit's handler requeues


def test_another_rank_signalled_makes_every_rank_save(submitit_job, tmp_path, monkeypatch):
    preemption.install_preemption_handler()
    monkeypatch.setattr(preemption, "_wait_to_be_stopped", lambda: None)
    trainer = _Trainer(_Strategy(others_signalled=True))
    callback = preemption.PreemptionCheckpoint(tmp_path)
    callback.on_train_start(trainer, None)
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.saved == [tmp_path / preemption.PREEMPTED_CHECKPOINT]
    assert submitit_job == [signal.SIGUSR2]


def test_signal_outside_training_requeues_at_once(submitit_job):
    preemption.install_preemption_handler()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert submitit_job == [signal.SIGUSR2]


def test_plain_slurm_requeue_failure_is_explained(monkeypatch, tmp_path):
    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("PATH", str(tmp_path))  # an `scontrol` that fails
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'Requested operation is presently disabled' >&2\nexit 1\n")
    fake.chmod(0o755)
    original = signal.getsignal(signal.SIGUSR1)
    try:
        preemption.install_preemption_handler()
        with pytest.raises(SystemExit, match="scontrol requeue 12.*--requeue"):
            os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        preemption.uninstall_preemption_handler()
        signal.signal(signal.SIGUSR1, original)


def test_run_id_is_stable_and_wandb_safe(tmp_path):
    run_dir = tmp_path / "multirun" / "vq_mini" / "sweep:1" / "3"
    first = run_id(run_dir)
    assert first == run_id(str(run_dir)) == run_id(run_dir / ".." / "3")
    assert first != run_id(tmp_path / "multirun" / "vq_mini" / "sweep:1" / "4")
    assert not set(first) & set("/\\#?%: ") and len(first) <= 64
    assert first.startswith("sweep-1-3-")


def test_wandb_logger_gets_the_run_id_unless_set(tmp_path):
    from omegaconf import OmegaConf

    def overrides(**cfg):
        return logger_overrides(OmegaConf.create(cfg), tmp_path)

    assert overrides(_target_=WANDB_LOGGER) == {"id": run_id(tmp_path)}
    assert overrides(_target_=WANDB_LOGGER, id="mine") == {}
    assert overrides(_target_="lightning.pytorch.loggers.CSVLogger") == {}


@pytest.mark.parametrize("name", ["a/b", "", "..", "has space", "x:y"])
def test_bad_run_names_are_refused(name):
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="run_name"):
        check_run_name(OmegaConf.create({"run_name": name}))


def test_run_name_names_run_and_sweep_directories(compose_cfg):
    cfg = compose_cfg(["experiment=vq_mini", "run_name=trial3", "hydra/launcher=slurm"])
    assert cfg.hydra.sweep.dir == "multirun/vq_mini/trial3"
    check_run_name(cfg)


def test_slurm_launcher_follows_the_trainer(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=3",
                       "hydra.launcher.partition=gpu", "hydra.launcher.account=lab"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node) == (3, 4)
    assert (launcher.partition, launcher.account) == ("gpu", "lab")
    assert launcher.max_num_timeout > 0  # a time limit requeues instead of failing the job


def test_gpu_preset_asks_one_gpu_per_task(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=slurm_gpu_example", "trainer=ddp", "trainer.devices=8"])
    assert cfg.hydra.launcher.gpus_per_node == cfg.hydra.launcher.tasks_per_node == 8


def test_no_handler_from_another_thread(submitit_job):
    import threading

    installed = []
    thread = threading.Thread(target=lambda: installed.append(preemption.install_preemption_handler()))
    thread.start()
    thread.join(timeout=10)
    assert installed == [None]  # signal handlers can only be set in the main thread: skipped, not a crash


def test_slurm_tier_says_why_it_skips(monkeypatch):
    import slurm_cluster

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in slurm_cluster._cannot_install()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: None)  # nothing installed, no apt-get
    assert "no apt-get" in slurm_cluster._cannot_install()
