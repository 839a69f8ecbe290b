"""Multi-process training on CPU (gloo): DDP and FSDP2 joint runs, codebooks identical across ranks,
resume from a distributed checkpoint at the same global step, consolidation, and a two-node torchrun run.

Every run is a real `python train.py ...` (Lightning starts the second rank itself, or torchrun does)
with a hard timeout, so a collective that hangs fails the test instead of the suite.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import ROOT, run_train

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

TINY = ["experiment=ett_mini", "debug=tiny", "logger=csv"]
TOKENIZER_ONLY = ["experiment=vq_mini", "debug=tiny", "logger=csv"]  # no LLM: the quicker runs


class RankTrace(Callback):
    """Test probe: per rank, the global step at every training batch start and the tokenizer's buffers
    (codebooks, EMA statistics) at the end of each stage, written under `out_dir`."""

    def __init__(self, out_dir: str, exit_at_step: int | None = None):
        self.out_dir = Path(out_dir)
        self.exit_at_step = exit_at_step

    def _rank(self, trainer) -> int:
        return int(trainer.global_rank)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"steps_rank{self._rank(trainer)}.txt", "a") as handle:
            handle.write(f"{pl_module.stage.name} {trainer.global_step}\n")
        if self.exit_at_step is not None and trainer.global_step == self.exit_at_step:
            os._exit(3)  # a crash on every rank, after the checkpoint of the previous step

    def on_train_end(self, trainer, pl_module) -> None:
        buffers = {k: v.detach().cpu().clone() for k, v in pl_module.tokenizer.named_buffers()}
        torch.save(buffers, self.out_dir / f"buffers_{pl_module.stage.name}_rank{self._rank(trainer)}.pt")


def _trace(out_dir: Path, exit_at_step: int | None = None) -> list[str]:
    args = ["+callbacks.trace._target_=tests.test_distributed.RankTrace", f"+callbacks.trace.out_dir={out_dir}"]
    return args + ([f"+callbacks.trace.exit_at_step={exit_at_step}"] if exit_at_step is not None else [])


def _steps(trace_dir: Path, rank: int) -> list[tuple[str, int]]:
    lines = (trace_dir / f"steps_rank{rank}.txt").read_text().split()
    return [(lines[i], int(lines[i + 1])) for i in range(0, len(lines), 2)]


def _check(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _assert_buffers_equal_across_ranks(trace_dir: Path, stage: str, world: int = 2) -> int:
    copies = [torch.load(trace_dir / f"buffers_{stage}_rank{r}.pt") for r in range(world)]
    assert copies[0], "the tokenizer has no buffers to compare"
    for other in copies[1:]:
        assert copies[0].keys() == other.keys()
        for name in copies[0]:
            assert torch.equal(copies[0][name], other[name]), f"{name} differs across ranks after '{stage}'"
    return len(copies[0])


def _final_step(stage_dir: Path) -> int:
    return int(torch.load(stage_dir / "last.ckpt" / "meta.pt", weights_only=True)["global_step"])


# ---- FSDP2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    trace = run_dir.parent / "trace"
    result = run_train(["trainer=fsdp", *TINY, *_trace(trace)], run_dir, cache_dir, timeout=480)
    return run_dir, trace, _check(result)


def test_fsdp_joint_run_writes_sharded_checkpoints_and_keeps_codebooks_identical(fsdp_run):
    run_dir, trace, output = fsdp_run
    last = run_dir / "checkpoints" / "ett" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file() and (last / "meta.pt").is_file()
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard per rank
    for stage in ("tokenizer", "ett"):
        assert _assert_buffers_equal_across_ranks(trace, stage) > 0
    # both ranks ran every step of every stage (4 per stage under debug=tiny)
    assert _steps(trace, 0) == _steps(trace, 1) and len(_steps(trace, 0)) == 16
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert final["psnr"] > 10 and "caption_loss" in final


def test_fsdp_export_equals_the_consolidated_checkpoint_in_one_process(fsdp_run, compose_cfg):
    """The run's exported tokenizer is the consolidated final checkpoint, which loads strictly."""
    from vistok.export import load_tokenizer
    from vistok.training.prepare import prepare_run
    from vistok.training.runner import build_module

    run_dir, _, _ = fsdp_run
    consolidated = run_dir / "checkpoints" / "post" / "last.ckpt.consolidated.ckpt"
    checkpoint = torch.load(consolidated, map_location="cpu", weights_only=True)
    cfg = compose_cfg(TINY)
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    prepare_run(cfg, datamodule)
    module = build_module(cfg, datamodule)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    exported = load_tokenizer(run_dir / "tokenizer").eval()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected, _ = module.tokenizer.eval()(images)
        got, _ = exported(images)
    assert torch.allclose(expected, got, atol=1e-5)


def test_fsdp_resumes_from_its_distributed_checkpoint_at_the_same_step(tmp_path, cache_dir):
    run_dir, trace = tmp_path / "run", tmp_path / "trace"
    args = ["trainer=fsdp", *TOKENIZER_ONLY, "max_steps_per_stage=6", "checkpoint_every=2"]
    crashed = run_train([*args, *_trace(trace, exit_at_step=4)], run_dir, cache_dir, timeout=300)
    assert crashed.returncode != 0
    stage_dir = run_dir / "checkpoints" / "tokenizer"
    assert (stage_dir / "step000004.ckpt" / ".metadata").is_file() and not (stage_dir / "done").exists()
    assert _steps(trace, 0)[-1] == ("tokenizer", 4)
    (trace / "steps_rank0.txt").unlink()
    (trace / "steps_rank1.txt").unlink()
    output = _check(run_train([*args, *_trace(trace)], run_dir, cache_dir, timeout=300))
    # last.ckpt is saved alongside step000004.ckpt (same step); either is the newest complete one
    assert re.search(r"resuming stage 'tokenizer' from the distributed checkpoint \S+/(last|step000004)\.ckpt "
                     r"at step 4 of the stage \(global step \d+\)", output), output[-3000:]
    for rank in (0, 1):
        assert _steps(trace, rank) == [("tokenizer", 4), ("tokenizer", 5)]  # continues where it stopped
    assert _final_step(stage_dir) == 6 and (stage_dir / "done").is_file()
    _assert_buffers_equal_across_ranks(trace, "tokenizer")


def test_rerun_of_a_finished_fsdp_run_loads_its_distributed_checkpoints(fsdp_run, tmp_path, cache_dir):
    """Finished stages are loaded from their sharded last.ckpt (one process, no group), then exported."""
    run_dir, _, _ = fsdp_run
    before = json.loads((run_dir / "metrics.json").read_text())["final"]
    output = _check(run_train(["trainer=fsdp", *TINY], run_dir, cache_dir, timeout=300))
    assert output.count("already finished: skipped") == 4
    from vistok.export import load_tokenizer

    assert load_tokenizer(run_dir / "tokenizer") is not None
    assert json.loads((run_dir / "metrics.json").read_text())["final"]["psnr"] == before["psnr"]


def test_fsdp_bf16_with_activation_checkpointing_trains_every_stage(tmp_path, cache_dir):
    """bf16 compute with fp32 reduction; groups frozen in the first stage are trained in later ones (FSDP2
    must re-read which parameters need gradients, or it writes bf16 gradients into fp32 parameters)."""
    run_dir = tmp_path / "run"
    _check(run_train(["trainer=fsdp", *TINY, "trainer.strategy.mixed_precision=bf16",
                      "trainer.strategy.activation_checkpointing=true"], run_dir, cache_dir, timeout=480))
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert math.isfinite(final["caption_loss"]) and final["psnr"] > 10
    state = torch.load(run_dir / "checkpoints" / "post" / "last.ckpt.consolidated.ckpt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state["state_dict"].values())  # parameters stay fp32


# ---- DDP --------------------------------------------------------------------------------------


def test_ddp_joint_run_keeps_codebooks_identical(tmp_path, cache_dir):
    run_dir, trace = tmp_path / "run", tmp_path / "trace"
    _check(run_train(["trainer=ddp", *TINY, *_trace(trace)], run_dir, cache_dir, timeout=480))
    for stage in ("tokenizer", "ett"):
        _assert_buffers_equal_across_ranks(trace, stage)
    assert _steps(trace, 0) == _steps(trace, 1)
    assert (run_dir / "checkpoints" / "ett" / "last.ckpt").is_file()  # DDP saves one file from rank 0
    assert (run_dir / "tokenizer" / "model.safetensors").is_file()


# ---- GAN stages -------------------------------------------------------------------------------------

GAN = ["max_steps_per_stage=8", "+module.discriminator._target_=vistok.losses.gan.PatchDiscriminator",
       "module.lecam_weight=0.1", "stages.tokenizer.train=[tokenizer,discriminator]",
       "+stages.tokenizer.lr.discriminator=1e-3", "+stages.tokenizer.gan_start=3"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_gan_stage_trains_under_each_strategy_with_identical_loss_buffers(strategy, tmp_path, cache_dir):
    """Generator and discriminator steps leave each other's parameters unused (DDP must allow it), and the
    LeCAM EMAs are buffers: ReplicaCheck stops the run if they differ across ranks."""
    run_dir = tmp_path / "run"
    output = _check(run_train([f"trainer={strategy}", *TOKENIZER_ONLY, *GAN], run_dir, cache_dir, timeout=400))
    assert "buffers differ" not in output
    logged = (run_dir / "csv").rglob("metrics.csv")
    assert any("train/gan_d" in path.read_text().splitlines()[0] for path in logged)  # the GAN really ran


# ---- two nodes on localhost ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_node_torchrun_fsdp_run_completes(tmp_path, cache_dir, compose_cfg):
    """Two `torchrun --nnodes=2` processes on localhost, one rank each, train one FSDP2 run together."""
    from hydra.utils import instantiate

    instantiate(compose_cfg(TOKENIZER_ONLY).data).prepare()  # the data exists before two "nodes" start
    run_dir, trace, port = tmp_path / "run", tmp_path / "trace", _free_port()
    env = {**os.environ, "VISTOK_CACHE": str(cache_dir), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    args = ["trainer=fsdp", "trainer.devices=1", "trainer.num_nodes=2", *TOKENIZER_ONLY, *_trace(trace),
            f"hydra.run.dir={run_dir}"]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
         f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
         str(ROOT / "train.py"), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            node.kill() if node.poll() is None else None
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert _steps(trace, 0) == _steps(trace, 1) == [("tokenizer", s) for s in range(4)]
    _assert_buffers_equal_across_ranks(trace, "tokenizer")
    assert sorted(p.name for p in (run_dir / "checkpoints" / "tokenizer" / "last.ckpt").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]


# ---- the replica check itself ---------------------------------------------------------------------


def _replica_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as torch_dist

    from vistok.training.replicas import mismatched_buffers

    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        module = torch.nn.Linear(2, 2)
        module.register_buffer("same", torch.arange(12.0).reshape(4, 3))
        module.register_buffer("drifted", torch.zeros(4, 3))
        module.register_buffer("permuted", torch.arange(12.0).reshape(4, 3))
        if rank == 1:
            module.drifted[2, 1] = 1e-3
            module.permuted.copy_(module.permuted[[1, 0, 2, 3]])  # same values, rows swapped
        bad = mismatched_buffers(module, torch.device("cpu"))
        if rank == 0:
            Path(out).write_text(json.dumps(bad))
    finally:
        torch_dist.destroy_process_group()


def test_replica_check_names_buffers_that_differ_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "bad.json"
    mp.spawn(_replica_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    assert json.loads(out.read_text()) == ["drifted", "permuted"]
