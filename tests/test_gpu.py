"""The CUDA paths, where a GPU is present: a joint run in bf16 autocast, FSDP2 with bf16 parameters on one
GPU (NCCL), and an exported tokenizer giving the CPU's codes on the GPU. Skipped on machines without CUDA."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import run_train

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TINY_LLM = ["llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]
CSV = "logger=csv"  # the GPU paths are under test here, not wandb


def _final(run_dir) -> dict:
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert all(math.isfinite(v) for v in final.values() if isinstance(v, float)), final
    return final


def test_joint_run_trains_every_stage_on_the_gpu_in_bf16_autocast(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_train(["experiment=ett_mini", "debug=tiny", "trainer=gpu", *TINY_LLM, CSV], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPU available: True (cuda), used: True" in result.stdout + result.stderr
    assert _final(run_dir)["psnr"] > 5


def test_fsdp2_with_bf16_parameters_on_one_gpu_then_consolidates(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_train(["experiment=ett_mini", "debug=tiny", "trainer=fsdp", "trainer.accelerator=gpu",
                        "trainer.devices=1", "trainer.strategy.mixed_precision=bf16",
                        "trainer.strategy.activation_checkpointing=true", *TINY_LLM, CSV], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _final(run_dir)["psnr"] > 5
    last = run_dir / "checkpoints" / "ett" / "last.ckpt"
    assert last.is_dir(), "FSDP2 writes distributed checkpoint directories"

    from vistok.checkpoint_files import consolidate_checkpoint

    state = torch.load(consolidate_checkpoint(last, tmp_path / "one.ckpt"), weights_only=True)["state_dict"]
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point()), \
        "bf16 compute must keep fp32 master parameters"


def test_exported_tokenizer_gives_the_cpus_codes_on_the_gpu(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_train(["experiment=vq_mini", "debug=tiny", CSV], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]

    from vistok import load_tokenizer
    from vistok.data.wds import expand_urls, make_val_loader

    urls = [u for u in expand_urls(str(next(cache_dir.glob("data/*/val-*.tar")).parent)) if "/val-" in u]
    images = next(iter(make_val_loader(urls, 32, 32, 0, 1, 0)))["image"]
    cpu = load_tokenizer(run_dir / "tokenizer")
    gpu = load_tokenizer(run_dir / "tokenizer", map_location="cuda").cuda()
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        on_cpu, on_gpu = cpu.encode(images), gpu.encode(images.cuda())
        same = (on_cpu.indices == on_gpu.indices.cpu()).float().mean().item()
        assert same >= 0.99, f"only {same:.3f} of the codes agree"  # near-ties may round the other way
        recon = gpu.decode(gpu.lookup(on_cpu.indices.cuda())).cpu()
        assert torch.allclose(recon, cpu.decode(cpu.lookup(on_cpu.indices)), atol=1e-3)
