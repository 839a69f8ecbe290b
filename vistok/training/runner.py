"""Run an experiment: build everything from the config, then fit its stages one after the other.

Each stage is one `Trainer.fit` with its own checkpoints under `checkpoints/<stage>/`; a finished
stage leaves a `done` marker, so re-running the same command in the same run directory resumes
where it stopped (finished stages are skipped, an interrupted one resumes from its newest complete
checkpoint; see vistok/training/checkpointing.py for how checkpoints are written, chosen and checked).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from vistok.atomic import write_text
from vistok.checkpoint_files import consolidate_checkpoint, is_distributed_checkpoint, load_weights
from vistok.export import save_tokenizer
from vistok.models.unified import UnifiedModel
from vistok.training.artifacts import save_llm
from vistok.training.checkpointing import (
    AtomicCheckpointIO,
    ResumeState,
    RollbackSkippedBatch,
    checked_resume_checkpoint,
    load_finished_stage,
    model_config,
)
from vistok.training.module import VistokModule, with_current_names
from vistok.training.preemption import PreemptionCheckpoint, install_preemption_handler
from vistok.training.prepare import prepare_run
from vistok.training.quiet import quiet_libraries
from vistok.training.replicas import ReplicaCheck
from vistok.training.report import RunReport, save_stage_pictures
from vistok.training.run_lock import RunDirectoryInUse, RunLock
from vistok.training.run_names import log_run_config, logger_overrides
from vistok.training.stages import Stage, stages_from_config


def build_llm(cfg: DictConfig):
    """The LLM, loaded from `llm.path` (the prepare phase wrote it there first when `llm.build` is set)."""
    from vistok.models.llm import CausalLM

    return CausalLM(cfg.path, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing)


# module.* keys that configure the unified model rather than its training (the rest are VistokModule's arguments)
MODEL_KEYS = ("generation", "max_caption_tokens")


def build_model(cfg: DictConfig) -> UnifiedModel:
    """The unified model of an experiment: tokenizer, and when `llm` is set the adapter (`llm_input`), the
    projector it reads through (if it reads embeddings), the LLM and, with `module.generation`, the visual head."""
    tokenizer = instantiate(cfg.tokenizer)
    llm = build_llm(cfg.llm) if cfg.get("llm") else None
    adapter = instantiate(cfg.llm_input) if llm is not None else None
    projector = None
    if llm is not None and adapter.needs_projector and cfg.get("projector"):
        projector = instantiate(cfg.projector, in_dim=tokenizer.embed_dim, out_dim=llm.hidden_size)
    return UnifiedModel(tokenizer, llm, projector, adapter, generation=bool(cfg.module.generation),
                        max_caption_tokens=int(cfg.module.max_caption_tokens))


def build_module(cfg: DictConfig, datamodule) -> VistokModule:
    module_cfg = OmegaConf.to_container(cfg.module, resolve=True)
    for key in MODEL_KEYS:
        module_cfg.pop(key)
    return instantiate(module_cfg, model=build_model(cfg), loss=instantiate(cfg.loss),
                       caption_schema=datamodule.caption_schema)


def _projector_config(cfg: DictConfig, module: VistokModule) -> dict | None:
    if module.projector is None:
        return None
    config = OmegaConf.to_container(cfg.projector, resolve=True)
    return {**config, "in_dim": module.tokenizer.embed_dim, "out_dim": module.llm.hidden_size}


def load_init(module: VistokModule, path: str) -> None:
    """Start from another run's weights (a checkpoint file or FSDP2 directory, or a run directory); only
    matching tensors are taken."""
    ckpt = Path(path)
    if ckpt.is_dir() and not is_distributed_checkpoint(ckpt):
        candidates = sorted(ckpt.glob("checkpoints/*/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise FileNotFoundError(f"init_from: no checkpoints/*/last.ckpt under {ckpt}")
        ckpt = candidates[-1]
    if not (ckpt.is_file() or is_distributed_checkpoint(ckpt)):
        raise FileNotFoundError(f"init_from: {ckpt} does not exist")
    state = with_current_names(module, load_weights(ckpt))
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"init_from {ckpt}: none of its {len(state)} tensors fits this model (their names or "
                         f"shapes differ, e.g. {next(iter(state), 'none')}); is it a run of another experiment?")
    module.load_state_dict(usable, strict=False)
    skipped = len(state) - len(usable)
    print(f"init_from {ckpt}: loaded {len(usable)}/{len(own)} tensors"
          + (f"; {skipped} of the checkpoint's did not fit (name or shape) and were left out" if skipped else ""))


def _callbacks(cfg: DictConfig, stage_dir: Path) -> list:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [ResumeState(model_config(cfg)), RollbackSkippedBatch(), ReplicaCheck(),
                  PreemptionCheckpoint(stage_dir)]
    callbacks.append(ModelCheckpoint(dirpath=stage_dir, filename="step{step:06d}", auto_insert_metric_name=False,
                                     every_n_train_steps=cfg.checkpoint_every, save_top_k=-1, save_last=True))
    return callbacks


def _fit_stage(cfg: DictConfig, module: VistokModule, datamodule, stage: Stage, loggers: list, out_dir: Path):
    stage_dir = out_dir / "checkpoints" / stage.name
    resume = checked_resume_checkpoint(module, stage_dir, model_config(cfg))
    plugins = None if cfg.trainer.get("plugins") else [AtomicCheckpointIO()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=_callbacks(cfg, stage_dir),
                                     plugins=plugins)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    except SIGTERMException:  # Lightning's own exit on SIGTERM has status 0: a scheduler would call it success
        raise SystemExit(f"stage '{stage.name}' stopped by SIGTERM at step {module.stage_step} of {stage.steps}; "
                         f"the same command resumes from its last checkpoint in {stage_dir}") from None
    trainer.save_checkpoint(stage_dir / "last.ckpt")
    if trainer.interrupted or getattr(trainer, "received_sigterm", False):
        # fit returned early because of a signal, not `trainer.max_steps` or the stage's own end: a `done`
        # marker now would make the next run skip the rest of the stage.
        raise SystemExit(f"stage '{stage.name}' interrupted at step {module.stage_step} of {stage.steps}; "
                         f"{stage_dir / 'last.ckpt'} holds it and the same command resumes it")
    # SIGTERM while validating: the stage's checkpoint is complete, a rerun validates it and marks it done.
    stopped = (f"stage '{stage.name}' stopped by SIGTERM while validating; the same command finishes it from "
               f"{stage_dir / 'last.ckpt'}")
    try:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    except SIGTERMException:
        raise SystemExit(stopped) from None
    if getattr(trainer, "received_sigterm", False):
        raise SystemExit(stopped)
    if trainer.is_global_zero:
        write_text(stage_dir / "done", json.dumps(module.val_metrics))
    return trainer


def unsharded(cfg: DictConfig, module: VistokModule, datamodule, final_stage_dir: Path) -> VistokModule:
    """`module` itself, or after an FSDP2 run (parameters are shards on each rank) a single-process copy
    built from the config and loaded strictly from the final stage's consolidated checkpoint."""
    if module.device_mesh is None:  # only FSDP2 (`trainer=fsdp`) gives the module a mesh and shards it
        return module
    consolidated = consolidate_checkpoint(final_stage_dir / "last.ckpt")
    print(f"consolidated the final distributed checkpoint into {consolidated}")
    single = build_module(cfg, datamodule)
    single.load_state_dict(load_weights(consolidated))
    return single.eval()


def save_exports(cfg: DictConfig, module: VistokModule, out_dir: Path, meta: dict) -> None:
    """The exported tokenizer (`tokenizer/`) and, when configured, the LLM with its projector (`llm/`)."""
    save_tokenizer(module.tokenizer, OmegaConf.to_container(cfg.tokenizer, resolve=True), out_dir / "tokenizer",
                   meta, overwrite=True)  # the run's own export: a rerun replaces it
    if module.llm is not None and cfg.export.llm:
        save_llm(module.model, _projector_config(cfg, module), out_dir / "llm")


def geneval(cfg: DictConfig, module: VistokModule, datamodule, judge, out_dir: Path) -> dict:
    """Mini-GenEval of the final model (vistok/generation/evaluate.py); writes images/geneval.png."""
    from vistok.generation.evaluate import run_geneval
    from vistok.generation.generator import TextToImage
    from vistok.generation.sampling import SamplingOptions

    g = cfg.geneval
    options = SamplingOptions(temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                              guidance_scale=g.guidance_scale, seed=g.seed)
    started = time.time()
    metrics = run_geneval(TextToImage(module.model), judge, datamodule.val_urls, datamodule.resolution, options,
                          num_images=g.num_images, batch_size=g.batch_size,
                          grid_path=out_dir / "images" / "geneval.png", progress=False)
    metrics["geneval_seconds"] = round(time.time() - started, 1)
    print("geneval: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "/" not in k))
    return metrics


def run(cfg: DictConfig) -> dict:
    """Train every stage of `cfg`, write metrics.json, pictures and the exported tokenizer. Returns metrics.

    The run directory is locked for the whole run: a second process on it stops at once (run_lock.py)."""
    try:
        with RunLock(cfg.paths.output_dir):
            return _run(cfg)
    except RunDirectoryInUse as error:
        raise SystemExit(f"error: {error}") from None


def _run(cfg: DictConfig) -> dict:
    quiet_libraries()
    install_preemption_handler()  # before any Trainer exists, so Lightning leaves the SLURM signal to vistok
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.num_threads) if cfg.get("num_threads") else None
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    prepared = prepare_run(cfg, datamodule)
    module = build_module(cfg, datamodule)
    datamodule.require_captions = module.llm is not None  # caption training: a caption-less sample is corrupt
    if module.llm is not None:  # so that users can set module.max_caption_tokens from their captions
        module.log_caption_lengths(datamodule.train_captions(limit=10_000))
    if cfg.get("init_from"):
        load_init(module, cfg.init_from)
    stages = stages_from_config(cfg.stages, cfg.get("max_steps_per_stage"), cfg.get("stage_defaults"))
    loggers = [instantiate(c, **logger_overrides(c, out_dir, cfg)) for c in (cfg.get("logger") or {}).values()
               if c is not None]
    log_run_config(loggers, cfg)
    report = RunReport(out_dir / "metrics.json", cfg.name)
    offset, is_zero, trained = 0, True, False
    for stage in stages:
        module.set_stage(stage, offset)
        done = out_dir / "checkpoints" / stage.name / "done"
        if done.exists():
            load_finished_stage(module, done.parent, model_config(cfg))
            print(f"stage '{stage.name}' already finished: skipped")
        else:
            stage_start = time.time()
            trainer = _fit_stage(cfg, module, datamodule, stage, loggers, out_dir)
            is_zero, trained = trainer.is_global_zero, True
            if is_zero:
                # The steps the stage took (a `trainer.max_steps` cap can end it early), not the configured ones.
                report.add_stage(stage.name, module.val_metrics, module.stage_step, time.time() - stage_start)
                save_stage_pictures(module, stage.name, out_dir, loggers)
        offset += stage.steps
    if is_zero:
        if trained:  # a re-run that trains nothing leaves metrics.json as the training left it
            # With a judge, the run is complete only once mini-GenEval is merged into `final` below.
            report.finish([s.name for s in stages], data_skipped=module.skipped_samples,
                          nan_skipped=module.nan_skips,
                          captions_truncated=module.captions_truncated if module.llm is not None else None,
                          complete=prepared.judge is None)
        final = None
        if prepared.judge is not None and "geneval_accuracy" not in report.final:
            final = unsharded(cfg, module, datamodule, out_dir / "checkpoints" / stages[-1].name)
            report.add_final(geneval(cfg, final, datamodule, prepared.judge, out_dir))
        if cfg.export.enabled:
            final = final or unsharded(cfg, module, datamodule, out_dir / "checkpoints" / stages[-1].name)
            save_exports(cfg, final, out_dir, {"experiment": cfg.name, "step": report.data["steps"],
                                               "metrics": report.final})
    for logger in loggers:
        logger.finalize("success")
    return report.final
