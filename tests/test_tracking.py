"""Experiment tracking as users read it back: the offline wandb run through wandb's own reader, and the CSV.

One tiny four-stage ETT run; its wandb run must hold the whole config, say what the run is (name, group,
tags), keep one monotone x-axis across the stages (each stage is a new Trainer, whose own step restarts
at 0) and keep every stage's final validation numbers in the summary, not only the last stage's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import run_train
from vistok.training.run_names import display_name, flat_config

TINY_LLM = ["llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]
STAGES = ["tokenizer", "align", "ett", "post"]
STEPS_PER_STAGE = 4  # debug=tiny


def leet(run_dir: Path, *flags: str) -> str:
    """`wandb leet inspect` (wandb's reader of a run's transaction log) on the run's offline wandb run."""
    wandb = Path(sys.executable).with_name("wandb")
    command = [str(wandb), "leet", "inspect", "--json", *flags, str(run_dir / "wandb" / "latest-run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    args = ["experiment=ett_mini", "debug=tiny", "num_threads=1", *TINY_LLM, "seed=3",
            "trainer.log_every_n_steps=1"]
    result = run_train(args, run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_wandb_run_holds_the_config_and_says_what_the_run_is(tracked_run):
    summary = json.loads(leet(tracked_run, "--summary"))
    config = summary["config"]
    assert config["seed"] == 3
    assert config["stages.ett.lr.llm"] == pytest.approx(1e-3)
    assert config["stages.ett.alpha"] == pytest.approx(0.25)
    assert config["llm.build.hidden_size"] == 32
    assert "seed=3" in config["overrides"]
    assert summary["name"].startswith("ett_mini ") and "seed=3" in summary["name"]
    assert set(STAGES) <= set(summary["tags"])


@pytest.mark.slow
def test_wandb_steps_are_monotone_across_stages_and_every_stage_keeps_its_numbers(tracked_run):
    rows = [json.loads(line) for line in leet(tracked_run).splitlines() if line.strip()]
    history = [r["history"] for r in rows if r.get("type") == "history"]
    steps = [_value(h, "trainer/global_step") for h in history]
    steps = [s for s in steps if s is not None]
    assert steps == sorted(steps), steps
    assert max(steps) == STEPS_PER_STAGE * len(STAGES)
    summary = json.loads(leet(tracked_run, "--summary"))["summary"]
    for stage in STAGES:
        assert f"val/{stage}/caption_loss" in summary or stage == "tokenizer", sorted(summary)
        assert f"val/{stage}/psnr" in summary, sorted(summary)
        # Sample captions as a table: image, reference and generated caption per row.
        table = summary[f"captions/{stage}"]
        assert table["_type"] == "table-file" and table["ncols"] == 4 and table["nrows"] > 0


@pytest.mark.slow
def test_csv_has_one_monotone_step_and_per_stage_validation_columns(tracked_run):
    files = sorted((tracked_run / "csv").rglob("metrics.csv"))
    assert len(files) == 1, files
    with files[0].open() as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(float(r["step"])) for r in rows]
    assert steps == sorted(steps) and max(steps) == STEPS_PER_STAGE * len(STAGES)
    for stage in STAGES:
        column = f"val/{stage}/psnr"
        assert any(r.get(column) for r in rows), column
    # The validation row of stage k sits at the end of stage k on the shared axis.
    ends = [int(float(r["step"])) for r in rows if r.get("val/ett/psnr")]
    assert ends == [STEPS_PER_STAGE * (STAGES.index("ett") + 1)]


def _value(history: dict, key: str):
    """A history record's value for `key` (the reader prints each record's items as one dict)."""
    return history.get("item", {}).get(key)


def test_display_name_says_what_sets_the_run_apart():
    cfg = OmegaConf.create({"name": "vq_mini", "run_name": "2026-01-01_00-00-00"})
    overrides = ["experiment=vq_mini", "tokenizer.quantizer.codebook_size=1024", "seed=2", "hydra.run.dir=x",
                 "num_threads=1"]
    assert display_name(cfg, overrides) == "vq_mini tokenizer.quantizer.codebook_size=1024 seed=2"
    named = OmegaConf.create({"name": "vq_mini", "run_name": "big-codebook"})
    assert display_name(named, ["run_name=big-codebook", "seed=2"]) == "vq_mini/big-codebook"


def test_flat_config_has_dotted_keys_and_leaves_hydra_out():
    cfg = OmegaConf.create({"stages": {"ett": {"lr": {"llm": 1e-3}, "train": ["llm"]}}, "seed": 1,
                            "x": "${seed}", "hydra": {"run": {"dir": "d"}}})
    flat = flat_config(cfg)
    assert flat == {"stages.ett.lr.llm": 1e-3, "stages.ett.train": ["llm"], "seed": 1, "x": 1}
