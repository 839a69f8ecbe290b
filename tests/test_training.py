"""The staged module: freezing, stage switching, caption gradients into the tokenizer, GAN steps."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from vistok.training.prepare import prepare_run
from vistok.training.runner import build_module
from vistok.training.stages import Stage

TINY = ["debug=tiny", "llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]


@pytest.fixture
def ett_parts(compose_cfg):
    cfg = compose_cfg(["experiment=ett_mini", *TINY])
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    prepare_run(cfg, datamodule)
    return cfg, datamodule, build_module(cfg, datamodule)


def fit_steps(module, datamodule, stage: Stage, tmp_path):
    import lightning as L

    module.set_stage(stage)
    trainer = L.Trainer(accelerator="cpu", max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        check_val_every_n_epoch=1000, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


def test_frozen_tokenizer_is_untouched_by_a_caption_stage(ett_parts, tmp_path):
    _, datamodule, module = ett_parts
    fit_steps(module, datamodule, Stage("warm", 2, ("tokenizer",), caption_weight=0.0, lr={"tokenizer": 1e-3}),
              tmp_path)
    tokenizer_before, llm_before = snapshot(module.tokenizer), snapshot(module.llm)
    stage = Stage("align", 3, ("projector", "llm"), alpha=0.0, lr={"projector": 1e-3, "llm": 1e-3})
    trainer = fit_steps(module, datamodule, stage, tmp_path)
    assert module.stage_step == 3 and trainer.global_step == 3
    # Parameters *and* buffers (EMA codebook, cluster sizes) of the frozen tokenizer are unchanged.
    assert changed(tokenizer_before, module.tokenizer) == []
    assert changed(llm_before, module.llm), "the trained LLM should have moved"


def test_stage_switch_sets_grads_modes_and_optimizer_groups(ett_parts):
    _, _, module = ett_parts
    module.set_stage(Stage("tok", 1, ("tokenizer",), lr={"tokenizer": 1e-3}))
    module.train()
    assert module.tokenizer.encoder.training and not module.llm.training
    assert all(p.requires_grad for p in module.tokenizer.parameters())
    assert not any(p.requires_grad for p in module.llm.parameters())
    module.set_stage(Stage("align", 1, ("projector", "llm"), lr={"projector": 1e-3, "llm": 5e-4}))
    module.train()
    assert not module.tokenizer.quantizer.training and module.llm.training
    (optimizer,), _ = module.configure_optimizers()
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {"projector": 1e-3, "llm": 5e-4}


def test_caption_loss_reaches_encoder_and_codebook_path(ett_parts):
    _, datamodule, module = ett_parts
    # The ETT mini stage: encoder and decoder tune, the codebook stays fixed (quantizer frozen).
    module.set_stage(Stage("ett", 1, ("encoder", "decoder", "projector", "llm"), alpha=0.0,
                           lr={"tokenizer": 1e-3, "projector": 1e-3, "llm": 1e-3}))
    module.train()
    batch = next(iter(datamodule.val_dataloader()))
    out = module.tokenizer.encode(batch["image"][:4])
    module.model.caption_loss(out, batch["caption"][:4]).loss.backward()
    grad = module.tokenizer.encoder.net[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert module.tokenizer.decoder.net[0].weight.grad is None  # no reconstruction term at alpha=0


def test_stage_rejects_unknown_groups_and_missing_lr():
    with pytest.raises(ValueError, match="unknown module group"):
        Stage("x", 1, ("encoderr",))
    with pytest.raises(KeyError, match="lr.llm"):
        Stage("x", 1, ("llm",), lr={}).lr_for("llm")


def test_gan_stage_steps_both_optimizers_and_counts_generator_steps(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=vq_mini", "debug=tiny", "module.lecam_weight=0.1",
                       "+module.discriminator._target_=vistok.losses.gan.PatchDiscriminator"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    module = build_module(cfg, datamodule)
    disc_before = snapshot(module.discriminator)
    stage = Stage("gan", 3, ("tokenizer", "discriminator"), caption_weight=0.0, gan_start=1,
                  lr={"tokenizer": 1e-3, "discriminator": 1e-3})
    trainer = fit_steps(module, datamodule, stage, tmp_path)
    assert module.stage_step == 3  # ends on generator steps although Lightning counted more
    assert trainer.global_step == 5  # 3 generator + 2 discriminator steps (GAN from step 1)
    assert changed(disc_before, module.discriminator)
    assert float(module.lecam.real_ema) != 0.0


def test_nan_loss_is_caught_before_any_update(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=vq_mini", "debug=tiny"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    module = build_module(cfg, datamodule)
    module.loss.l1_weight = float("nan")
    before = snapshot(module.tokenizer)
    # The weighted tokenizer loss is NaN while its unweighted terms (logged as train/tok/*) stay finite.
    with pytest.raises(FloatingPointError,
                       match=r"stage 'tok' at step 0 .*non-finite terms: \['train/tokenizer_loss'\]"):
        fit_steps(module, datamodule, Stage("tok", 2, ("tokenizer",), caption_weight=0.0, lr={"tokenizer": 1e-3}),
                  tmp_path)
    assert [k for k in changed(before, module.tokenizer) if "encoder" in k or "decoder" in k] == []
    module.nan_policy, module.max_nan_skips = "skip", 3
    with pytest.raises(FloatingPointError, match="more than 3 batches skipped"):
        fit_steps(module, datamodule, Stage("tok", 2, ("tokenizer",), caption_weight=0.0, lr={"tokenizer": 1e-3}),
                  tmp_path)


def test_checkpoints_of_the_earlier_layout_load_into_the_module(ett_parts):
    """Checkpoints written before the unified model keep its parts at the top level (`tokenizer.*`, `llm.*`):
    they load strictly, every tensor in its place (resume, init_from and finished stages read them)."""
    cfg, datamodule, module = ett_parts
    own = module.state_dict()
    assert own and all(k.startswith(("model.", "loss.", "discriminator.", "semantic.")) for k in own)
    earlier = {k.removeprefix("model."): v.clone() + 1 for k, v in own.items() if v.is_floating_point()}
    earlier |= {k.removeprefix("model."): v.clone() for k, v in own.items() if not v.is_floating_point()}
    fresh = build_module(cfg, datamodule)
    fresh.load_state_dict(earlier, strict=True)
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[k], v + 1) for k, v in own.items() if v.is_floating_point())


def test_init_from_takes_every_tensor_of_the_earlier_layout_and_refuses_a_foreign_checkpoint(ett_parts, tmp_path,
                                                                                             capsys):
    """init_from chooses tensors by name before loading, so it must rename as the strict load's hooks do: a
    tokenizer checkpoint of the earlier layout (`tokenizer.*`) loads whole; one of which nothing fits fails."""
    from vistok.training.runner import load_init

    cfg, datamodule, module = ett_parts
    tokenizer = {f"tokenizer.{k}": v.clone() + 1 for k, v in module.tokenizer.state_dict().items()
                 if v.is_floating_point()}
    torch.save({"state_dict": tokenizer}, tmp_path / "pretrained.ckpt")
    fresh = build_module(cfg, datamodule)
    load_init(fresh, str(tmp_path / "pretrained.ckpt"))
    assert f"loaded {len(tokenizer)}/" in capsys.readouterr().out
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[f"model.{k}"], v) for k, v in tokenizer.items())
    torch.save({"state_dict": {"encoder.conv.weight": torch.zeros(3)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="none of its 1 tensors fits this model"):
        load_init(fresh, str(tmp_path / "foreign.ckpt"))


def test_the_caption_loss_alone_tunes_the_ibq_codebook_in_ett_mini_ibq(compose_cfg, tmp_path):
    """ETT tunes the whole IBQ tokenizer: with alpha 0 the codebook moves by the caption gradient alone."""
    cfg = compose_cfg(["experiment=ett_mini_ibq", *TINY])
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    prepare_run(cfg, datamodule)
    module = build_module(cfg, datamodule)
    codebook = module.tokenizer.quantizer.codebook.weight.detach().clone()
    stage = Stage("ett", 2, tuple(cfg.stages.ett.train), alpha=0.0, lr={"tokenizer": 1e-2, "projector": 1e-3,
                                                                         "llm": 1e-3})
    fit_steps(module, datamodule, stage, tmp_path)
    moved = (module.tokenizer.quantizer.codebook.weight.detach() - codebook).abs().amax(1)
    assert (moved > 0).sum() >= 1, "no code moved under the caption loss"
