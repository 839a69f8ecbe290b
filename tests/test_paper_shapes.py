"""Paper shapes on a CPU (`debug=paper_shapes`): `*_paper` experiments at their real resolution, token count,
codebook and LLM architecture, with depth, batch and steps cut, trained end to end on shards of drawn
landscapes at their own resolution, exported and loaded back.

Everything is written here: the shards (`scripts.make_shards`), a Qwen2.5-1.5B-architecture directory at
reduced depth (random weights, the real `tokenizer.json` of tests/test_local_llm.py), a Hugging Face vision
teacher, and ETT's "pre-trained" IBQ tokenizer checkpoint (random weights: the shapes are what is tested).
`train_at_paper_shapes` also serves the README's measurements (wall time, peak RSS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.make_shards import make_shards
from tests.conftest import ROOT
from tests.conftest import write_lpips_weights
from tests.test_local_llm import write_qwen2_directory
from vistok.reproduce.paper_shapes import PAPER_SHAPES, paper_llm_config, paper_shape_overrides

RESOLUTIONS = {"ibq_paper": 256, "ett_paper": 512, "ett_paper_gen": 512, "tokenflow_paper": 256,
               "tokenflow_paper_vq": 256, "flextok_paper": 256, "onedpiece_paper": 256, "instella_paper": 1024,
               "instella_paper_vq2d": 1024, "dualtoken_paper": 256}
LLM_LAYERS = 1
TEACHER_DIM = 1152  # SigLIP-so400m's width, as the paper configs' tokenizer.decoder.semantic.out_dim
# CI trains one step per stage (time); the README's measurements use debug=paper_shapes' two, so that the
# second step's peak, with AdamW's moments allocated, is the one measured.
ONE_STEP = ("max_steps_per_stage=1",)


# ---- inputs a paper run needs, written here ---------------------------------------------------------------


def write_paper_qwen2(path: Path, layers: int = LLM_LAYERS) -> Path:
    """Qwen2.5-1.5B's architecture with `layers` layers (random weights) beside a real tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    write_qwen2_directory(path, hidden=64, layers=1)  # the tokenizer files; the model is replaced below
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    architecture = {k: v for k, v in paper_llm_config(layers).items() if k != "model_type"}
    config = Qwen2Config(**{**architecture, "vocab_size": len(tokenizer)},
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(path), safe_serialization=True)
    return path


def write_vision_teacher(path: Path, resolution: int, hidden: int = TEACHER_DIM) -> Path:
    """A two-layer Hugging Face ViT of the paper teacher's width (random weights), saved as a Hub model."""
    import torch
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=resolution, patch_size=16, hidden_size=hidden, num_hidden_layers=2,
                       num_attention_heads=16, intermediate_size=2 * hidden)
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(str(path), safe_serialization=True)
    return path


def write_init_checkpoint(path: Path, overrides: list[str], compose) -> Path:
    """A checkpoint holding the tokenizer `overrides` compose (freshly built): the pre-trained run of
    init_from."""
    import torch
    from hydra.utils import instantiate

    tokenizer = instantiate(compose(overrides).tokenizer)
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}}, path)
    return path


def write_shards(root: Path, resolution: int) -> tuple[str, str]:
    make_shards(root / "train", resolution, num_samples=8, per_shard=4, seed=1)
    make_shards(root / "val", resolution, num_samples=2, per_shard=2, seed=2)
    return str(root / "train"), str(root / "val")


# ---- running and measuring ---------------------------------------------------------------------------------


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    peak_rss_gib: float


def run_measured(args: list[str], run_dir: Path, cache: Path, threads: int = 1,
                 timeout: int = 900) -> Measured:
    """`python train.py ARGS` in its own process; its wall time and peak RSS (from wait4, this child only)."""
    env = {**os.environ, "VISTOK_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"num_threads={threads}", "logger=csv",
           f"hydra.run.dir={run_dir}"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = run_dir.parent / f"{run_dir.name}.out", run_dir.parent / f"{run_dir.name}.err"
    start = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        status, usage = _reap(process, timeout)
    wall = time.monotonic() - start
    rss_kib = usage.ru_maxrss  # Linux: KiB
    return Measured(status, out_path.read_text(), err_path.read_text(), wall, rss_kib / 1024 ** 2)


def _reap(process: subprocess.Popen, timeout: float):
    """(exit code, resource usage of this child alone). Reaped with wait4 rather than Popen.wait, which
    would reap it first and lose its usage; killed after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return process.returncode, usage


def train_at_paper_shapes(experiment: str, work: Path, cache: Path, compose, threads: int = 2,
                          extra: tuple[str, ...] = ()) -> tuple:
    """Write the experiment's inputs under `work`, train it at paper shapes (plus `extra` overrides);
    returns (overrides, run_dir, Measured)."""
    resolution = RESOLUTIONS[experiment]
    train, val = write_shards(work / "shards", resolution)
    shapes = PAPER_SHAPES[experiment]
    inputs = {}
    if shapes.llm:
        inputs["llm_path"] = str(write_paper_qwen2(work / "qwen2"))
    if shapes.teacher:
        inputs["teacher_path"] = str(write_vision_teacher(work / "teacher", resolution))
        inputs["teacher_dim"] = TEACHER_DIM
    if shapes.init:
        inputs["init_from"] = "(written below)"
    if shapes.lpips:
        inputs["lpips_vgg"], inputs["lpips_heads"] = map(str, write_lpips_weights(work / "lpips"))
    overrides = paper_shape_overrides(experiment, train, val, **inputs)
    if shapes.init:  # the tokenizer as the pre-training experiment builds it
        pretraining = [f"experiment={shapes.init}", "debug=paper_shapes", *PAPER_SHAPES[shapes.init].depth]
        init = write_init_checkpoint(work / "pretrained.ckpt", pretraining, compose)
        overrides = [*(o for o in overrides if not o.startswith("init_from=")), f"init_from={init}"]
    overrides += list(extra)
    run_dir = work / "run"
    return overrides, run_dir, run_measured(overrides, run_dir, cache, threads)


def check_end_to_end(experiment: str, run_dir: Path, measured: Measured) -> None:
    """Every stage trained and validated, the export loads and tokenizes an image at the paper resolution."""
    import torch

    import vistok

    assert measured.returncode == 0, measured.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["stages"]), metrics
    for name, stage in metrics["stages"].items():
        assert any(key.startswith("val") or key in ("psnr", "caption_loss") for key in stage), (name, stage)
    tokenizer = vistok.load_tokenizer(run_dir / "tokenizer")
    resolution = RESOLUTIONS[experiment]
    with torch.no_grad():
        out = tokenizer.encode(torch.rand(1, 3, resolution, resolution) * 2 - 1)
        recon = tokenizer.decode(out.embeddings, out.mask)
    assert out.indices.shape[1] == tokenizer.num_tokens
    assert recon.shape == (1, 3, resolution, resolution)


# ---- tests -------------------------------------------------------------------------------------------------


def test_shards_are_drawn_at_the_requested_resolution_with_captions_naming_the_scene(tmp_path):
    import tarfile

    import numpy as np
    from PIL import Image

    (path,) = make_shards(tmp_path, 512, num_samples=3, per_shard=3, seed=0)
    with tarfile.open(path) as tar:
        assert len(tar.getnames()) == 9
        image = Image.open(tar.extractfile("000000000.jpg")).convert("L")
        caption = tar.extractfile("000000000.txt").read().decode()
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert image.size == (512, 512) and meta["status"] == "success" and meta["caption"] == caption
    assert " sky" in caption and (" on " in caption)
    assert json.loads((tmp_path / "00000_stats.json").read_text())["successes"] == 3
    # Detail at full resolution, not an upscaled thumbnail: neighbouring pixels differ.
    pixels = np.asarray(image, np.float32)
    assert np.abs(np.diff(pixels, axis=1)).mean() > 1.0


def test_every_paper_experiment_has_paper_shapes():
    paper = {path.stem for path in (ROOT / "configs" / "experiment").glob("*_paper*.yaml")}
    assert paper == set(PAPER_SHAPES) == set(RESOLUTIONS)


@pytest.mark.parametrize("experiment", sorted(PAPER_SHAPES))
def test_paper_shapes_keep_the_paper_sizes_and_cut_only_depth(experiment, compose_cfg, tmp_path):
    """Composed with placeholder inputs: resolution, codebook and widths are the paper experiment's own;
    every depth key is smaller than the paper's."""
    shapes = PAPER_SHAPES[experiment]
    inputs = {"llm_path": str(tmp_path), "init_from": str(tmp_path), "teacher_path": str(tmp_path),
              "teacher_dim": TEACHER_DIM, "lpips_vgg": str(tmp_path), "lpips_heads": str(tmp_path)}
    wanted = {"llm_path": shapes.llm, "init_from": shapes.init, "teacher_path": shapes.teacher,
              "teacher_dim": shapes.teacher, "lpips_vgg": shapes.lpips, "lpips_heads": shapes.lpips}
    paper = compose_cfg([f"experiment={experiment}"])
    small = compose_cfg(paper_shape_overrides(experiment, "T", "V", **{k: v for k, v in inputs.items()
                                                                        if wanted[k]}))
    assert small.data.resolution == paper.data.resolution == RESOLUTIONS[experiment]
    assert small.trainer.accelerator == "cpu" and small.trainer.devices == 1 and small.data.batch_size == 1
    for key in ("tokenizer.quantizer", "tokenizer.embed_dim", "tokenizer.num_tokens",
                "tokenizer.encoder.width", "tokenizer.encoder.patch_size", "tokenizer.encoder.base_channels",
                "tokenizer.encoder.ch_mult", "tokenizer.encoder.semantic.base_channels"):
        assert _select(small, key) == _select(paper, key), key
    for override in shapes.depth:
        key = override.split("=")[0]
        assert _select(small, key) < _select(paper, key), key


def _select(cfg, key):
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match="llm_path, init_from, lpips_vgg and lpips_heads"):
        paper_shape_overrides("ett_paper", "T", "V")
    with pytest.raises(ValueError, match="teacher_path and teacher_dim"):
        paper_shape_overrides("tokenflow_paper", "T", "V")
    with pytest.raises(ValueError, match="no paper shapes for 'ett_mini'"):
        paper_shape_overrides("ett_mini", "T", "V")


def test_the_paper_llm_is_qwen2_5_1_5b_at_reduced_depth():
    config = paper_llm_config(2)
    assert config["model_type"] == "qwen2" and config["hidden_size"] == 1536
    assert config["num_hidden_layers"] == 2
    assert config["num_attention_heads"] == 12 and config["num_key_value_heads"] == 2


@pytest.mark.slow
def test_ett_paper_trains_at_paper_shapes(tmp_path, cache_dir, compose_cfg):
    """512 px, 32 x 32 = 1024 tokens of a K = 131,072 IBQ codebook into a Qwen2.5-1.5B-architecture LLM
    (hidden 1536) at reduced depth: every tensor of an ibq_paper tokenizer loads (init_from), align, ett and
    post train and validate, then export and load."""
    overrides, run_dir, measured = train_at_paper_shapes("ett_paper", tmp_path, cache_dir, compose_cfg,
                                                         extra=ONE_STEP)
    check_end_to_end("ett_paper", run_dir, measured)
    import torch

    pretrained = torch.load(tmp_path / "pretrained.ckpt", weights_only=True)["state_dict"]
    assert f"loaded {len(pretrained)}/" in measured.stdout, "an ibq_paper tokenizer must load whole"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["align", "ett", "post"]
    tokenizer_config = (run_dir / "tokenizer" / "config.yaml").read_text()
    assert "codebook_size: 131072" in tokenizer_config
    assert json.loads((run_dir / "llm" / "config.json").read_text())["hidden_size"] == 1536


@pytest.mark.slow
def test_onedpiece_paper_trains_at_paper_shapes(tmp_path, cache_dir, compose_cfg):
    """A ViT family at 256 px: 256 latent tokens, VQ K = 4096, width 768, patch 16, depth 2."""
    _, run_dir, measured = train_at_paper_shapes("onedpiece_paper", tmp_path, cache_dir, compose_cfg,
                                                 extra=ONE_STEP)
    check_end_to_end("onedpiece_paper", run_dir, measured)


@pytest.mark.slow
def test_ibq_paper_trains_at_paper_shapes(tmp_path, cache_dir, compose_cfg):
    """ETT's tokenizer pre-training at 256 px: IBQ's VQGAN CNN (attention at the 16 x 16 level), K = 131,072,
    D = 256, with LPIPS, the discriminator and LeCAM from the first step; exported with its attention."""
    _, run_dir, measured = train_at_paper_shapes("ibq_paper", tmp_path, cache_dir, compose_cfg, extra=ONE_STEP)
    check_end_to_end("ibq_paper", run_dir, measured)
    assert list(json.loads((run_dir / "metrics.json").read_text())["stages"]) == ["tokenizer"]
    from omegaconf import OmegaConf

    exported = OmegaConf.load(run_dir / "tokenizer" / "config.yaml")
    assert list(exported.encoder.attn_levels) == list(exported.decoder.attn_levels) == [4]
    assert exported.encoder.mid_attention and exported.quantizer.codebook_size == 131072
