"""Captions on any captioned data: sample captions kept and drawn, truncation counted, and `debug=tiny` on
img2dataset-layout shards with free-text captions (the shards are written here, as img2dataset lays them out).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_train

TINY_LLM = ["llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]

# Free text, as scraped alt-texts are: nothing the generated dataset's slot parser understands; some are
# longer than a small `module.max_caption_tokens`.
FREE_TEXT = [
    "a dog on the beach",
    "sunset over the harbour with boats",
    "Vintage poster: the 1968 county fair, rides, music and food for the whole family all weekend long",
    "close-up of a red flower",
    "two people walking in the rain under one umbrella",
    "an empty road through the desert at noon",
]


# ---- img2dataset-layout shards ---------------------------------------------------------------------------


IMAGE_SIZE = 96  # larger than the mini experiments' 32 px: the experiment's resolution applies


def _jpeg(rng: np.random.Generator, size: int = IMAGE_SIZE) -> bytes:
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_img2dataset_shards(out: Path, num_shards: int = 2, per_shard: int = 12,
                             seed: int = 0) -> list[Path]:
    """Shards as img2dataset writes them: `NNNNN.tar` holding `<key>.jpg`, `<key>.txt`, `<key>.json` (with
    its `status`), a failed row (json only) in each shard, and `NNNNN_stats.json` beside each tar."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for shard in range(num_shards):
        path = out / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in range(per_shard):
                key = f"{shard:05d}{row:04d}"
                caption = FREE_TEXT[(shard * per_shard + row) % len(FREE_TEXT)]
                meta = {"key": key, "status": "success", "caption": caption, "error_message": None,
                        "url": f"http://localhost/{key}.jpg", "width": IMAGE_SIZE, "height": IMAGE_SIZE}
                _add(tar, f"{key}.jpg", _jpeg(rng))
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
            failed = f"{shard:05d}{per_shard:04d}"
            _add(tar, f"{failed}.json", json.dumps({"key": failed, "status": "failed_to_download",
                                                      "error_message": "HTTP 404"}).encode())
        stats = {"count": per_shard + 1, "successes": per_shard, "failed_to_download": 1,
                 "failed_to_resize": 0}
        (out / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
        paths.append(path)
    return paths


@pytest.fixture
def img2dataset_shards(tmp_path) -> tuple[str, str]:
    write_img2dataset_shards(tmp_path / "shards" / "train", seed=1)
    write_img2dataset_shards(tmp_path / "shards" / "val", num_shards=1, seed=2)
    return f"{tmp_path}/shards/train", f"{tmp_path}/shards/val/*.tar"


def shard_args(train: str, val: str) -> list[str]:
    return ["data=shards", f"data.train={train}", f"data.val={val}"]


# ---- debug=tiny on any data source -----------------------------------------------------------------------


@pytest.mark.parametrize("experiment", ["vq_mini", "ett_mini"])
def test_debug_tiny_composes_and_builds_the_shard_data(experiment, compose_cfg, img2dataset_shards):
    from hydra.utils import instantiate

    cfg = compose_cfg([f"experiment={experiment}", "debug=tiny", *shard_args(*img2dataset_shards)])
    data = instantiate(cfg.data)
    data.prepare()
    assert data.batches_per_rank(1) == 2  # 24 successes in the stats files (under the cap of 256), batch 16
    assert data.num_val == 64
    assert cfg.data.resolution == 32  # the experiment's size, not the data source's


def test_an_experiment_owns_its_resolution_on_any_data_source(compose_cfg, img2dataset_shards):
    generated = compose_cfg(["experiment=ett_mini"])
    shards = compose_cfg(["experiment=ett_mini", *shard_args(*img2dataset_shards)])
    assert shards.data.resolution == generated.data.resolution == 32
    paper = compose_cfg(["experiment=ett_paper", *shard_args(*img2dataset_shards)])
    assert paper.data.resolution == 512


def test_shard_caps_from_debug_tiny_bound_the_epoch_and_the_validation_set(img2dataset_shards):
    from vistok.data.datamodule import ShardDataModule

    train, val = img2dataset_shards
    capped = ShardDataModule(train, val, resolution=32, batch_size=4, val_batch_size=5, num_train=8,
                             num_val=7)
    assert capped.batches_per_rank(1) == 2  # 8 samples, not the 24 the stats files count
    keys = [k for batch in capped.val_dataloader() for k in batch["key"]]
    assert len(keys) == 7
    whole = ShardDataModule(train, val, resolution=32, batch_size=4, val_batch_size=5)
    assert whole.batches_per_rank(1) == 6
    assert len([k for batch in whole.val_dataloader() for k in batch["key"]]) == 12


@pytest.mark.parametrize("cpus, workers", [(1, 0), (2, 1), (3, 2), (16, 4)])
def test_num_workers_follow_the_visible_cpus(cpus, workers, monkeypatch):
    from vistok.data import datamodule

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert datamodule.default_num_workers() == workers
    assert datamodule.ShardDataModule("a", "b", num_workers=None).num_workers == workers
    assert datamodule.ShardDataModule("a", "b", num_workers=3).num_workers == 3


def test_shard_config_picks_workers_from_the_machine(compose_cfg):
    cfg = compose_cfg(["experiment=vq_mini", "data=shards", "data.train=x", "data.val=y"])
    assert cfg.data.num_workers is None


# ---- sample captions on any captioned data ---------------------------------------------------------------


def test_free_text_captions_are_kept_as_samples_without_slot_scores():
    from vistok.data.schema import generated_captions
    from vistok.training.evaluation import ValidationAccumulator

    acc = ValidationAccumulator(codebook_size=8, schema=generated_captions())
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    acc.add_captions(["k0", "k1", "k2", "k3"], FREE_TEXT[:4], ["a dog", FREE_TEXT[1], "x", ""], keep=3,
                     images=images)
    assert [(s.key, s.reference) for s in acc.samples] == [("k0", FREE_TEXT[0]), ("k1", FREE_TEXT[1]),
                                                            ("k2", FREE_TEXT[2])]
    assert torch.equal(acc.samples[1].image, images[1])
    metrics = acc.compute()
    assert metrics["caption_exact_match"] == 0.25
    assert not any(name.startswith("attribute_accuracy") for name in metrics)


def test_slot_captions_score_attributes_only_with_the_datas_schema():
    from vistok.data.generated import caption_from_attributes
    from vistok.data.schema import generated_captions
    from vistok.training.evaluation import ValidationAccumulator

    reference = caption_from_attributes({"size": "large", "colour": "red", "shape": "circle",
                                         "position": "left", "mark": "blue"})
    wrong_mark = reference.replace("blue mark", "red mark")
    acc = ValidationAccumulator(codebook_size=8, schema=generated_captions())
    acc.add_captions(["k", "l"], [reference, reference], [reference, wrong_mark], keep=1)
    metrics = acc.compute()
    assert metrics["attribute_accuracy/mark"] == 0.5 and metrics["attribute_accuracy/colour"] == 1.0
    assert metrics["attribute_accuracy"] == 0.9 and len(acc.samples) == 1
    plain = ValidationAccumulator(codebook_size=8)  # plain shards: no schema, no attribute metrics, no error
    plain.add_captions(["k"], [reference], [reference], keep=1)
    assert plain.compute() == {"caption_exact_match": 1.0}


def test_the_data_config_gives_the_caption_schema(compose_cfg, img2dataset_shards):
    from hydra.utils import instantiate

    generated = instantiate(compose_cfg(["experiment=ett_mini"]).data)
    assert list(generated.caption_schema.slots) == ["size", "colour", "shape", "position", "mark"]
    shards = instantiate(compose_cfg(["experiment=ett_mini", *shard_args(*img2dataset_shards)]).data)
    assert shards.caption_schema is None


def _text_rows(image: Image.Image, top: int) -> np.ndarray:
    """Rows below `top` that hold any non-background pixel."""
    pixels = np.asarray(image.convert("L"))[top:]
    return np.nonzero((pixels < 200).any(axis=1))[0]


def test_captioned_images_write_both_captions_under_each_image():
    from vistok.eval.images import captioned_images

    images = torch.zeros(3, 3, 32, 32)  # mid-grey in [-1, 1]
    picture = captioned_images(images, FREE_TEXT[:3], ["a dog", "sunset", FREE_TEXT[2]])
    assert isinstance(picture, Image.Image)
    assert picture.width == 3 * 128 + 4 * 2  # each 32 px image 4x upscaled, 2 px gaps
    assert picture.height > 128 + 2 * 2
    below = _text_rows(picture, 128 + 2)
    assert len(below) > 10, "no text under the images"
    # The long caption wraps over several lines, and its column holds ink far below the short ones'.
    column = lambda c: np.asarray(picture.convert("L"))[130:, 2 + c * 130: 2 + c * 130 + 128]  # noqa: E731
    deepest = [np.nonzero((column(c) < 200).any(axis=1))[0].max() for c in range(3)]
    assert deepest[2] > deepest[0] + 20
    # Empty captions draw nothing and break nothing.
    assert captioned_images(images[:1], [""], [""]).width == 128 + 2 * 2


def test_captioned_images_keep_large_images_at_their_size():
    from vistok.eval.images import captioned_images

    picture = captioned_images(torch.zeros(2, 3, 200, 200), ["a", "b"], ["c", "d"])
    assert picture.width == 2 * 200 + 3 * 2


# ---- truncation counted ----------------------------------------------------------------------------------


@pytest.fixture
def caption_module(compose_cfg):
    from omegaconf import open_dict

    from vistok.training.prepare import prepare_run
    from vistok.training.runner import build_module

    class Captions:
        caption_schema = None

        def train_captions(self, limit=None):
            return FREE_TEXT * 4

    cfg = compose_cfg(["experiment=ett_mini", "debug=tiny", *TINY_LLM, "module.max_caption_tokens=8"])
    with open_dict(cfg):
        cfg.llm.path = cfg.llm.path + "-free-text"  # built from FREE_TEXT, apart from the generated data's
    prepare_run(cfg, Captions())  # builds the tiny LLM from the free-text captions
    return build_module(cfg, Captions())


def test_truncated_captions_are_counted_and_warned_once(caption_module, caplog):
    module = caption_module
    lengths = module.llm.caption_lengths(FREE_TEXT)
    too_long = sum(n > 8 for n in lengths)
    assert 0 < too_long < len(FREE_TEXT)
    with caplog.at_level(logging.WARNING):
        assert module.count_truncated_captions(FREE_TEXT) == too_long
        module.count_truncated_captions(FREE_TEXT)
    assert module.captions_truncated == 2 * too_long
    warnings = [r for r in caplog.records if "max_caption_tokens" in r.getMessage()]
    assert len(warnings) == 1


def test_caption_lengths_include_the_eos_that_max_caption_tokens_counts(caption_module):
    llm = caption_module.llm
    for caption, length in zip(FREE_TEXT, llm.caption_lengths(FREE_TEXT)):
        ids, attention = llm.tokenize_captions([caption], max_length=10_000)
        assert int(attention.sum()) == length
        ids, attention = llm.tokenize_captions([caption], max_length=8)
        assert int(attention.sum()) == min(length, 8)


def test_caption_length_percentiles_are_logged(caption_module, caplog):
    from vistok.models.llm import caption_length_summary

    summary = caption_length_summary([3, 4, 5, 6, 30], max_tokens=8)
    assert summary == {"captions": 5, "p50": 5, "p90": 30, "p99": 30, "max": 30, "truncated": 1}
    with caplog.at_level(logging.INFO):
        logged = caption_module.log_caption_lengths(FREE_TEXT)
    assert logged["max"] == max(caption_module.llm.caption_lengths(FREE_TEXT))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "p50" in text and "p99" in text and "max_caption_tokens=8" in text


# ---- the whole run on img2dataset shards -----------------------------------------------------------------


@pytest.mark.slow
def test_debug_tiny_tokenizer_run_on_img2dataset_shards(tmp_path, img2dataset_shards):
    args = ["experiment=vq_mini", "debug=tiny", "num_threads=1", *shard_args(*img2dataset_shards)]
    result = run_train(args, tmp_path / "run", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stages"]["tokenizer"]["steps"] > 0 and "psnr" in metrics["final"]
    assert "worker processes in total" not in result.stderr  # PyTorch's too-many-workers warning


@pytest.mark.slow
def test_debug_tiny_caption_run_keeps_sample_captions_on_free_text(tmp_path, img2dataset_shards):
    args = ["experiment=ett_mini", "debug=tiny", "num_threads=1", *TINY_LLM, "module.max_caption_tokens=10",
            "module.num_sample_captions=3", *shard_args(*img2dataset_shards)]
    result = run_train(args, tmp_path / "run", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    samples = json.loads((run / "sample_captions.json").read_text())
    stages = ["tokenizer", "align", "ett", "post"]
    assert list(samples) == stages
    summary = _wandb_summary(run)
    for stage in stages:
        assert len(samples[stage]) == 3
        assert all(s["reference"] in FREE_TEXT and isinstance(s["generated"], str) for s in samples[stage])
        picture = Image.open(run / "images" / f"captions_{stage}.png")
        assert picture.height > picture.width // 3 + 16, "the captions are written under the images"
        table = summary[f"captions/{stage}"]  # wandb: one row per sample (key, image, reference, generated)
        assert table["_type"] == "table-file" and table["nrows"] == 3 and table["ncols"] == 4
    assert "max_caption_tokens" in result.stdout + result.stderr  # the truncation warning
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert final["captions_truncated"] > 0
    # plain shards have no caption schema: exact match, but no attribute metrics
    assert "caption_exact_match" in final and not any(k.startswith("attribute_accuracy") for k in final)


def _wandb_summary(run_dir: Path) -> dict:
    """The offline wandb run's summary, read with wandb's own reader."""
    import subprocess
    import sys

    wandb = Path(sys.executable).with_name("wandb")
    command = [str(wandb), "leet", "inspect", "--summary", "--json", str(run_dir / "wandb" / "latest-run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["summary"]


def test_the_truncation_count_survives_a_resume():
    from types import SimpleNamespace

    from vistok.training.checkpointing import ResumeState, restore_counters

    checkpoint: dict = {}
    ResumeState().on_save_checkpoint(None, SimpleNamespace(captions_truncated=7), checkpoint)
    resumed = SimpleNamespace(captions_truncated=0)
    restore_counters(resumed, checkpoint)
    assert resumed.captions_truncated == 7
