"""Every experiment composes; config mistakes fail early with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.conftest import ROOT, run_train

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
CONTRACT_EXPERIMENTS = {"vq_mini", "ett_mini", "ett_mini_frozen", "ett_mini_index", "ett_mini_alpha0",
                        "ett_mini_alpha1", "ett_mini_frozen_wide"}


def test_contract_experiments_exist():
    assert CONTRACT_EXPERIMENTS <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_builds_stages(name, compose_cfg):
    from vistok.training.stages import stages_from_config

    cfg = compose_cfg([f"experiment={name}"])
    assert cfg.name == name
    stages = stages_from_config(cfg.stages, defaults=cfg.stage_defaults)
    assert stages and all(s.steps > 0 for s in stages)
    tokenizer = instantiate(cfg.tokenizer)
    assert tokenizer.num_tokens > 0


def test_default_experiment_is_ett_mini(compose_cfg):
    assert compose_cfg([]).name == "ett_mini"


def test_frozen_arm_has_equal_steps_to_ett(compose_cfg):
    ett, frozen = compose_cfg(["experiment=ett_mini"]), compose_cfg(["experiment=ett_mini_frozen"])
    assert [s.steps for s in ett.stages.values()] == [s.steps for s in frozen.stages.values()]
    assert "encoder" in ett.stages.ett.train and "encoder" not in frozen.stages.ett.train


@pytest.mark.slow
def test_config_errors_name_the_key(tmp_path):
    cache = tmp_path / "cache"
    unknown = run_train(["experiment=vq_mini", "trainer.max_stepz=3"], tmp_path / "a", cache)
    assert unknown.returncode != 0 and "max_stepz" in unknown.stderr
    wrong_type = run_train(["experiment=vq_mini", "data.batch_size=big"], tmp_path / "b", cache)
    assert wrong_type.returncode != 0
    assert "data.batch_size" in wrong_type.stderr and "expects int" in wrong_type.stderr
    bad_experiment = run_train(["experiment=nope"], tmp_path / "c", cache)
    assert bad_experiment.returncode != 0
    assert "vq_mini" in bad_experiment.stderr and "ett_mini" in bad_experiment.stderr
    # Nothing was generated or built before the errors.
    assert not cache.exists() or not any(cache.rglob("*.tar"))


@pytest.mark.parametrize("name", ["ibq_paper", "ett_paper", "dualtoken_paper"])
def test_paper_recipes_keep_lpips_in_the_tokenizer_loss(name, compose_cfg):
    cfg = compose_cfg([f"experiment={name}"])
    assert cfg.loss.perceptual is not None and cfg.loss.perceptual_weight == 1.0


def test_ibq_pretraining_uses_the_papers_optimiser_and_quantizer(compose_cfg):
    cfg = compose_cfg(["experiment=ibq_paper"])
    assert list(cfg.module.optimizer.betas) == [0.5, 0.9] and cfg.module.optimizer.weight_decay == 0.0
    stage = cfg.stages.tokenizer
    assert stage.lr.tokenizer == 1.0e-4 and stage.min_lr_ratio == 1.0 and stage.warmup_ratio == 0.0  # fixed lr
    assert cfg.tokenizer.quantizer._target_.endswith("IndexBackpropQuantizer")
    assert (cfg.tokenizer.quantizer.codebook_size, cfg.tokenizer.embed_dim) == (131072, 256)
    weights = cfg.loss.quantizer_weights
    assert (weights.commit, weights.quant, weights.entropy) == (0.25, 1.0, 0.05)
