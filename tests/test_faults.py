"""Fault injection: what is left after the faults long runs meet, injected into real `python train.py` runs.

Each test injects one fault for real — SIGKILL of the process group, corrupt bytes in real shards, a bad
override, NaN pixels in a live batch, a diverging optimiser, a checkpoint that would run code — and checks
what the user sees (exit code, the message) and what stays on disk. The tier is marked `faults`; it runs
in the default `pytest -q`.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from tests.conftest import ROOT, run_train

pytestmark = pytest.mark.faults

TINY = ["debug=tiny", "num_threads=1"]
TINY_LLM = ["llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]
# vq_mini with a discriminator (GAN from stage step 3, LeCAM), a checkpoint after every batch.
GAN_RUN = ["experiment=vq_mini", *TINY, "max_steps_per_stage=12", "checkpoint_every=1",
           "+module.discriminator._target_=vistok.losses.gan.PatchDiscriminator", "module.lecam_weight=0.1",
           "stages.tokenizer.train=[tokenizer,discriminator]", "+stages.tokenizer.lr.discriminator=1e-3",
           "+stages.tokenizer.gan_start=3"]
# Credentials in the environment of every run that must never reach a file of the run directory.
SECRETS = {"WANDB_API_KEY": "faultsecretwandbkey0123456789abcdefghijk",
           "HF_TOKEN": "hf_faultSecretHuggingFaceToken0123456789"}


# ---- fault injectors (instantiated inside the training process from `+callbacks.fault=...`) ----------


class NaNBatch(Callback):
    """Once, at stage step `at_step`, turn one image of the batch into NaN pixels (bad input, overflow)."""

    def __init__(self, at_step: int):
        self.at_step, self.fired = at_step, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if not self.fired and pl_module.stage_step == self.at_step:
            batch["image"][0].fill_(float("nan"))
            self.fired = True


def inject_nan_at(step: int) -> list[str]:
    return ["+callbacks.fault._target_=tests.test_faults.NaNBatch", f"+callbacks.fault.at_step={step}"]


# ---- helpers ------------------------------------------------------------------------------------------


def stage_dir(run_dir: Path, stage: str = "tokenizer") -> Path:
    return run_dir / "checkpoints" / stage


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def non_finite(state_dict: dict) -> list[str]:
    return [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(stage_dir(run_dir).glob("*.ckpt"))


def partial_saves(run_dir: Path) -> list[Path]:
    return list(stage_dir(run_dir).glob(".*.partial-*"))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["final"]


def nothing_built(cache: Path) -> bool:
    """No shards generated and no LLM built: the run stopped before any heavy work."""
    return not cache.exists() or not (any(cache.rglob("*.tar")) or (cache / "llm").exists())


def kill_during_save(run_dir: Path, cache: Path, args: list[str], after_new: int = 2,
                     timeout: float = 300) -> bool | None:
    """Start a run and SIGKILL its whole process group while it writes a checkpoint, once it has completed
    `after_new` new ones. Returns whether the kill landed mid-save (its partial file is left), None if the
    run finished first."""
    env = {**os.environ, **SECRETS, "VISTOK_CACHE": str(cache), "WANDB_MODE": "offline",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + timeout
    folder = stage_dir(run_dir)
    wanted = len(checkpoints(run_dir)) + after_new
    while process.poll() is None and time.time() < deadline:
        names = os.listdir(folder) if folder.is_dir() else []
        complete = sum(n.endswith(".ckpt") and not n.startswith(".") for n in names)
        if complete >= wanted and any(".partial-" in n for n in names):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return bool(partial_saves(run_dir))
        time.sleep(0.0005)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the run neither saved a checkpoint nor finished in time")
    return None


def assert_no_secrets(*places) -> None:
    for place in places:
        if isinstance(place, Path):
            files = [p for p in place.rglob("*") if p.is_file()]
            blobs = [(str(p), p.read_bytes()) for p in files]
        else:
            blobs = [("output", place.encode())]
        for where, blob in blobs:
            for name, secret in SECRETS.items():
                assert secret.encode() not in blob, f"{name} leaked into {where}"


# ---- 1. kill -9 mid-run and mid-save, then rerun --------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir) -> Path:
    """The GAN run, uninterrupted: what a killed-and-resumed run must end up identical to."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_train(GAN_RUN, run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_kill9_during_saves_then_rerun_resumes_to_the_identical_result(reference_run, tmp_path, cache_dir,
                                                                       monkeypatch):
    run_dir = tmp_path / "run"
    mid_save = []
    for _ in range(3):  # each rerun resumes, then is killed again in a later save
        landed = kill_during_save(run_dir, cache_dir, GAN_RUN)
        if landed is None:
            break
        mid_save.append(landed)
        # Whatever the kill interrupted, every checkpoint under a real name is complete and finite.
        for path in checkpoints(run_dir):
            assert non_finite(load(path)["state_dict"]) == [], path
    assert any(mid_save), f"no kill landed inside a checkpoint write in {len(mid_save)} tries"
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"
    interrupted = max(checkpoints(run_dir), key=lambda p: p.stat().st_mtime_ns)
    resumed_step = load(interrupted)["vistok"]["stage_step"]
    left = [p.name for p in partial_saves(run_dir)]
    print(f"kills landed mid-save: {mid_save}; partial files left: {left}; "
          f"resuming from {interrupted.name} at stage step {resumed_step}")

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    result = run_train(GAN_RUN, run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = f"resuming stage 'tokenizer' from {interrupted} at step {resumed_step} of the stage"
    assert expected in result.stdout
    assert partial_saves(run_dir) == [], "leftovers of killed saves are cleaned up"

    # Optimisers, LR schedules, discriminator + LeCAM, codebook buffers, data position and random state
    # were all restored: the result is bit-identical to the run that was never interrupted.
    reference, resumed = load(stage_dir(reference_run) / "last.ckpt"), load(stage_dir(run_dir) / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"]
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]
    differing = [k for k, v in reference["state_dict"].items()
                 if not torch.equal(v, resumed["state_dict"][k])]
    assert differing == [], f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    for ref_opt, res_opt in zip(reference["optimizer_states"], resumed["optimizer_states"]):
        for index, state in ref_opt["state"].items():
            assert all(torch.equal(state[k], res_opt["state"][index][k]) for k in state)
    assert metrics(run_dir)["psnr"] == metrics(reference_run)["psnr"]
    assert_no_secrets(run_dir, result.stdout, result.stderr)


@pytest.mark.slow
def test_resume_with_a_different_codebook_size_names_the_key(reference_run, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    stage_dir(run_dir).mkdir(parents=True)
    source = stage_dir(reference_run) / "step000009.ckpt"
    (stage_dir(run_dir) / source.name).write_bytes(source.read_bytes())
    result = run_train([*GAN_RUN, "tokenizer.quantizer.codebook_size=128"], run_dir, cache_dir)
    assert result.returncode != 0
    assert "IncompatibleCheckpointError" in result.stderr
    assert "tokenizer.quantizer.codebook_size: 256 -> 128" in result.stderr
    assert "model.tokenizer.quantizer.vq._codebook.embed (1, 256, 16) -> (1, 128, 16)" in result.stderr
    assert "size mismatch" not in result.stderr  # no shape dump from load_state_dict


def test_finished_stage_with_a_different_codebook_size_names_the_key(reference_run, compose_cfg):
    from hydra.utils import instantiate

    from vistok.training.checkpointing import IncompatibleCheckpointError, load_finished_stage, model_config
    from vistok.training.runner import build_module

    cfg = compose_cfg([*GAN_RUN, "tokenizer.quantizer.codebook_size=512"])
    module = build_module(cfg, instantiate(cfg.data))
    with pytest.raises(IncompatibleCheckpointError, match=r"codebook_size: 256 -> 512"):
        load_finished_stage(module, stage_dir(reference_run), model_config(cfg))


# ---- 2. corrupt and missing data ----------------------------------------------------------------------


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


# (shard, index) -> fault; plus the last sample of the last shard, cut by truncating the tar.
FAULTS = {(0, 3): "truncated_jpeg", (1, 7): "garbage_bytes", (2, 11): "missing_caption",
          (3, 5): "missing_image"}


def write_faulty_shards(out: Path, split: str, num_shards: int = 5, per_shard: int = 20,
                        seed: int = 0) -> list[str]:
    """img2dataset-style JPEG shards with 5 bad samples in 100 (5%), one of each fault kind."""
    from vistok.data.generated import caption_from_attributes, render_sample

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for shard in range(num_shards):
        path = out / f"{split}-{shard:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(per_shard):
                image, attrs = render_sample(rng, 32, 2, 0.5)
                key, fault = f"{shard:05d}{index:04d}", FAULTS.get((shard, index))
                data = _jpeg(image)
                if fault == "truncated_jpeg":
                    data = data[: len(data) // 2]
                elif fault == "garbage_bytes":
                    data = np.random.default_rng(index).bytes(len(data))
                if fault != "missing_image":
                    _add(tar, f"{key}.jpg", data)
                if fault != "missing_caption":
                    _add(tar, f"{key}.txt", caption_from_attributes(attrs).encode())
                _add(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
        (out / f"{split}-{shard:05d}_stats.json").write_text(json.dumps({"successes": per_shard}))
        paths.append(str(path))
    last_key = f"{num_shards - 1:05d}{per_shard - 1:04d}.jpg"
    with tarfile.open(paths[-1]) as tar:
        member = tar.getmember(last_key)
    data = Path(paths[-1]).read_bytes()
    Path(paths[-1]).write_bytes(data[: member.offset_data + member.size // 2])  # cut inside the last image
    return paths


BAD_SAMPLES = len(FAULTS) + 1  # + the sample cut by the truncated tar


@pytest.mark.slow
def test_corrupt_shards_are_skipped_and_counted(tmp_path):
    from vistok.data.wds import make_train_loader

    train = write_faulty_shards(tmp_path / "shards", "train", seed=1)
    write_faulty_shards(tmp_path / "shards", "val", seed=2)
    steps, batch = 4, 16
    # A caption-training run (tiny LLM, the alignment stage only), on the faulty shards.
    args = ["experiment=ett_mini", *TINY_LLM, "num_threads=1", "data=shards",
            f"data.train={tmp_path}/shards/train-*.tar", f"data.val={tmp_path}/shards/val-*.tar",
            "data.resolution=32", f"data.batch_size={batch}",
            "data.val_batch_size=64", "data.num_workers=0", f"max_steps_per_stage={steps}",
            "checkpoint_every=1000000", "stages.tokenizer=null", "stages.ett=null", "stages.post=null"]
    result = run_train(args, tmp_path / "run", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping corrupt sample or shard" in result.stdout + result.stderr

    # Training batches draw shards with replacement: replay the same deterministic stream to know how
    # many bad samples the run's training batches met; validation reads every sample exactly once.
    loader = make_train_loader(train, batch, 32, 0, 1, 0, batches_per_rank=math.ceil(100 / batch), seed=0,
                               require_caption=True)
    batches = iter(loader)
    train_skipped = sum(next(batches)["skipped"] for _ in range(steps))
    print(f"data_skipped {metrics(tmp_path / 'run')['data_skipped']} = {train_skipped} in training batches "
          f"+ {BAD_SAMPLES} in validation")
    assert metrics(tmp_path / "run")["data_skipped"] == train_skipped + BAD_SAMPLES


def test_each_injected_fault_is_one_skip_in_an_exact_pass(tmp_path):
    from vistok.data.wds import make_val_loader

    paths = write_faulty_shards(tmp_path, "val")
    batches = list(make_val_loader(paths, 16, 32, 0, 1, 0, require_caption=True))
    keys = {k for b in batches for k in b["key"]}
    assert sum(b["skipped"] for b in batches) == BAD_SAMPLES
    assert len(keys) == 100 - BAD_SAMPLES
    # A run without captions to train on keeps the caption-less sample.
    batches = list(make_val_loader(paths, 16, 32, 0, 1, 0, require_caption=False))
    assert sum(b["skipped"] for b in batches) == BAD_SAMPLES - 1


@pytest.mark.parametrize("pattern", ["{tmp}/nowhere/train-*.tar", "[]"])
def test_missing_or_empty_shard_list_fails_before_training(pattern, tmp_path):
    pattern = pattern.format(tmp=tmp_path)
    cache = tmp_path / "cache"
    result = run_train(["experiment=vq_mini", "data=shards", f"data.train={pattern}", f"data.val={pattern}"],
                       tmp_path / "run", cache)
    assert result.returncode != 0
    assert ("data pattern []" if pattern == "[]" else f"data pattern {pattern!r}") in result.stderr
    assert nothing_built(cache) and not (tmp_path / "run" / "checkpoints").exists()


# ---- 3. bad configs -------------------------------------------------------------------------------------


BAD_CONFIGS = {
    "unknown key": (["experiment=vq_mini", "trainer.max_stepz=3"], ["max_stepz"]),
    "wrong type": (["experiment=vq_mini", "data.batch_size=big"], ["data.batch_size", "expects int"]),
    "missing experiment": (["experiment=nope"], ["nope", "vq_mini", "ett_mini"]),
    "stage names a missing module": (
        ["experiment=vq_mini", "stages.tokenizer.train=[tokenizer,vision_tower]"],
        ["stage 'tokenizer'", "vision_tower"]),
    "stage trains an absent llm": (["experiment=vq_mini", "stages.tokenizer.train=[tokenizer,llm]"],
                                   ["stages.tokenizer.train", "'llm'"]),
    "pooling more tokens than exist": (
        ["experiment=ett_mini", "projector=swiglu", "projector.pool_tokens=100"],
        ["projector.pool_tokens=100", "64 tokens"]),
    "visual tokens exceed llm positions": (["experiment=ett_mini", "data.resolution=128"],
                                           ["1024 visual tokens", "llm.build.max_position_embeddings"]),
    "zero learning rate of a trained group": (["experiment=vq_mini", "stages.tokenizer.lr.tokenizer=0"],
                                              ["stages.tokenizer.lr.tokenizer=0", "> 0"]),
    "negative learning rate": (["experiment=ett_mini", "stages.align.lr.llm=-1e-3"],
                               ["stages.align.lr.llm=-0.001", "> 0"]),
    "a stage that trains nothing": (["experiment=vq_mini", "stages.tokenizer.train=[]"],
                                    ["stage 'tokenizer'", "'train' is empty"]),
    "zero batch size": (["experiment=vq_mini", "data.batch_size=0"], ["data.batch_size=0", "positive"]),
    "zero validation batch size": (["experiment=vq_mini", "data.val_batch_size=0"],
                                   ["data.val_batch_size=0", "positive"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_before_heavy_work_naming_the_key(case, tmp_path):
    args, expected = BAD_CONFIGS[case]
    cache = tmp_path / "cache"
    result = run_train(args, tmp_path / "run", cache)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, (text, result.stderr[-2000:])
    assert nothing_built(cache)


# ---- 4. numerical faults --------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_fails_the_run_without_finishing_its_stage_and_a_rerun_resumes(tmp_path, cache_dir):
    """A plain `kill PID` (SIGTERM: a scheduler, a timeout): non-zero exit, the stage is not marked done."""
    run_dir = tmp_path / "run"
    args = ["experiment=vq_mini", *TINY, "max_steps_per_stage=120", "checkpoint_every=2"]
    env = {**os.environ, "VISTOK_CACHE": str(cache_dir), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = stage_dir(run_dir) / "step000002.ckpt"
    deadline = time.time() + 300
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its first checkpoint"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, "an interrupted run must not exit 0"
    assert "stage 'tokenizer' stopped by SIGTERM at step" in stderr, stderr[-2000:]
    assert not (stage_dir(run_dir) / "done").exists()
    rerun = run_train(args, run_dir, cache_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming stage 'tokenizer'" in rerun.stdout + rerun.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 120


@pytest.mark.slow
def test_nan_loss_stops_the_run_at_its_step_and_keeps_checkpoints_finite(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_train(["experiment=vq_mini", *TINY, "checkpoint_every=1", *inject_nan_at(2)], run_dir,
                       cache_dir)
    assert result.returncode != 0
    assert "FloatingPointError: non-finite loss in stage 'tokenizer' at step 2 (total step 2)" \
        in result.stderr
    assert "'train/tok/l1'" in result.stderr
    assert checkpoints(run_dir), "the good checkpoints before the fault are kept"
    for path in checkpoints(run_dir):
        assert non_finite(load(path)["state_dict"]) == [], path
    assert load(stage_dir(run_dir) / "last.ckpt")["vistok"]["stage_step"] == 2


@pytest.mark.slow
def test_skip_policy_drops_the_nan_batch_without_poisoning_the_codebook(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_train(["experiment=vq_mini", *TINY, "module.nan_policy=skip", *inject_nan_at(2)], run_dir,
                       cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "non-finite loss in stage 'tokenizer' at step 2" in result.stderr + result.stdout
    final = load(stage_dir(run_dir) / "last.ckpt")
    # The EMA codebook is updated inside the forward, before the loss is known; the skipped batch's NaN
    # update was rolled back, so the stage went on to all its steps.
    assert non_finite(final["state_dict"]) == []
    assert final["vistok"]["stage_step"] == 4
    assert metrics(run_dir)["nan_skipped"] == 1


@pytest.mark.slow
def test_diverged_weights_are_never_written_over_a_good_checkpoint(tmp_path, cache_dir):
    # An infinite discriminator learning rate: its losses are finite at the step it diverges, the
    # weights it leaves are not, and a checkpoint is due right after.
    run_dir = tmp_path / "run"
    args = [a for a in GAN_RUN if "lr.discriminator" not in a] + ["+stages.tokenizer.lr.discriminator=inf"]
    result = run_train(args, run_dir, cache_dir)
    assert result.returncode != 0
    assert "NonFiniteCheckpointError: refusing to write checkpoint" in result.stderr
    assert "discriminator.net" in result.stderr
    for path in checkpoints(run_dir):
        assert non_finite(load(path)["state_dict"]) == [], path
    assert load(stage_dir(run_dir) / "last.ckpt")["vistok"]["stage_step"] == 3  # the last good step


@pytest.mark.slow
def test_a_stage_stopped_before_its_done_marker_is_finished_without_another_step(tmp_path, cache_dir):
    """The window between a stage's last checkpoint and its `done` marker (validation runs there): a run
    killed in it resumes to exactly the uninterrupted result, not one step further."""
    args = ["experiment=vq_mini", *TINY]
    reference, rerun = tmp_path / "reference", tmp_path / "rerun"
    for run_dir in (reference, rerun):
        result = run_train(args, run_dir, cache_dir)
        assert result.returncode == 0, result.stderr[-3000:]
    (stage_dir(rerun) / "done").unlink()  # as if killed after the last checkpoint, before the marker
    (rerun / "metrics.json").unlink()
    result = run_train(args, rerun, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, resumed = load(stage_dir(reference) / "last.ckpt"), load(stage_dir(rerun) / "last.ckpt")
    assert resumed["vistok"]["stage_step"] == expected["vistok"]["stage_step"] == 4
    assert resumed["global_step"] == expected["global_step"]
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert metrics(rerun) == metrics(reference)
    assert (stage_dir(rerun) / "done").exists()


@pytest.mark.slow
def test_metrics_json_records_the_steps_trained_and_a_rerun_that_trains_nothing_leaves_it(tmp_path, cache_dir):
    """`trainer.max_steps` (a Lightning habit) caps every stage's fit: the record says what was trained."""
    run_dir = tmp_path / "run"
    args = ["experiment=vq_mini", *TINY, "max_steps_per_stage=6", "trainer.max_steps=3"]
    result = run_train(args, run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    first = (run_dir / "metrics.json").read_text()
    report = json.loads(first)
    assert report["stages"]["tokenizer"]["steps"] == 3 and report["steps"] == 3
    assert report["wall_seconds"] == report["stages"]["tokenizer"]["wall_seconds"] > 0
    assert report["complete"] is True
    assert load(stage_dir(run_dir) / "last.ckpt")["vistok"]["stage_step"] == 3
    rerun = run_train(args, run_dir, cache_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already finished: skipped" in rerun.stdout + rerun.stderr
    assert (run_dir / "metrics.json").read_text() == first


def test_metrics_json_says_complete_only_after_the_last_stage(tmp_path):
    """Between stages `final` is the newest stage's metrics; `complete` tells a reader it is not the run's yet."""
    from vistok.training.report import RunReport

    path = tmp_path / "metrics.json"
    report = RunReport(path, "ett_mini")
    report.add_stage("tokenizer", {"psnr": 20.0}, steps=10, wall_seconds=1.0)
    written = json.loads(path.read_text())
    assert written["complete"] is False and written["final"] == {"psnr": 20.0}
    report.add_stage("align", {"psnr": 20.0, "caption_loss": 3.0}, steps=5, wall_seconds=1.0)
    report.finish(["tokenizer", "align"], data_skipped=0)
    written = json.loads(path.read_text())
    assert written["complete"] is True and written["steps"] == 15
    resumed = RunReport(path, "ett_mini")  # a rerun that trains a stage again is incomplete until it ends
    assert resumed.data["complete"] is True
    resumed.add_stage("align", {"psnr": 21.0}, steps=5, wall_seconds=1.0)
    assert json.loads(path.read_text())["complete"] is False


def test_metrics_json_of_a_run_with_geneval_is_complete_only_once_geneval_is_merged(tmp_path):
    """A mini-GenEval run measures after its last stage: `final` lacks geneval_accuracy until then."""
    from vistok.training.report import RunReport

    path = tmp_path / "metrics.json"
    report = RunReport(path, "ett_mini_gen")
    report.add_stage("gen", {"generation_loss": 2.0}, steps=10, wall_seconds=1.0)
    report.finish(["gen"], data_skipped=0, complete=False)
    written = json.loads(path.read_text())
    assert written["complete"] is False and "geneval_accuracy" not in written["final"]
    report.add_final({"geneval_accuracy": 0.25})
    written = json.loads(path.read_text())
    assert written["complete"] is True and written["final"]["geneval_accuracy"] == 0.25


# ---- 5. one process per run directory ------------------------------------------------------------------


def start_train(args: list[str], run_dir: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "VISTOK_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_second_process_on_a_live_run_directory_is_refused_and_changes_nothing(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = ["experiment=vq_mini", *TINY, "max_steps_per_stage=80", "checkpoint_every=2"]
    first = start_train(args, run_dir, cache_dir)
    first_ckpt = stage_dir(run_dir) / "step000002.ckpt"
    deadline = time.time() + 300
    while not first_ckpt.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second could start"
    config_before = (run_dir / ".hydra" / "config.yaml").read_text()
    # A different experiment aimed at the same directory: it must neither train nor leave its config there.
    second = run_train(["experiment=ett_mini", *TINY], run_dir, cache_dir)
    assert second.returncode != 0
    assert f"is in use by PID {first.pid} on host" in second.stderr, second.stderr[-2000:]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config_before
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    report = json.loads((run_dir / "metrics.json").read_text())
    assert report["experiment"] == "vq_mini" and report["steps"] == 80


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    from vistok.training.run_lock import RunDirectoryInUse, RunLock

    run_dir = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import sys; from vistok.training.run_lock import RunLock; "
                           f"RunLock({str(run_dir)!r}).acquire(); sys.exit(0)"], cwd=ROOT, timeout=120)
    assert dead.returncode == 0 and (run_dir / ".vistok.lock").exists()  # its holder died holding it
    with RunLock(run_dir) as lock:
        assert json.loads((run_dir / ".vistok.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunDirectoryInUse, match=f"PID {os.getpid()}"):
            RunLock(run_dir).acquire()  # a second holder, even in the same process, is refused
    assert lock._fd is None


# ---- 6. loading untrusted files -------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this runs a command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_checkpoint(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": 3, "payload": _RunsCode(marker)}, path)


@pytest.mark.slow
def test_resume_never_unpickles_a_checkpoint(tmp_path, cache_dir):
    run_dir, marker = tmp_path / "run", tmp_path / "code-ran"
    write_malicious_checkpoint(stage_dir(run_dir) / "last.ckpt", marker)
    result = run_train(["experiment=vq_mini", *TINY], run_dir, cache_dir)
    assert result.returncode != 0
    assert "holds objects that a safe (weights_only) load refuses" in result.stderr
    assert not marker.exists()


def test_init_from_and_exports_never_unpickle(tmp_path):
    import pickle

    from vistok import load_tokenizer
    from vistok.checkpoint_files import load_weights

    marker = tmp_path / "code-ran"
    write_malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(pickle.UnpicklingError):
        load_weights(tmp_path / "evil.ckpt")  # what init_from loads with
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.yaml").write_text(f"_target_: os.system\ncommand: touch {marker}\n")
    (export / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="refusing to instantiate 'os.system'"):
        load_tokenizer(export)
    assert not marker.exists()
