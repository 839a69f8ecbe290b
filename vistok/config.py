"""Checks on the composed config that Hydra itself does not make (plain YAML has no types)."""

from __future__ import annotations

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the key."""


def _kind(value) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "dict"
    return None


_ACCEPTS = {"float": {"float", "int"}, "int": {"int"}, "bool": {"bool"}, "list": {"list"}, "dict": {"dict"}}


def check_override_types(cfg: DictConfig, overrides: list[str], reference: DictConfig) -> None:
    """Every `key=value` override must keep the type of the value it replaces.

    `reference` is the same config composed without the value overrides (group choices kept).
    Interpolations and nulls on either side are not checked (their type is not known yet).
    """
    for override in overrides:
        key, sep, _ = override.lstrip("+~").partition("=")
        if not sep or "/" in key or key.startswith("hydra") or override.startswith(("+", "~")):
            continue
        if _is_interpolation(reference, key):
            continue
        old = _kind(OmegaConf.select(reference, key, throw_on_missing=False))
        new = _kind(OmegaConf.select(cfg, key, throw_on_missing=False))
        if old is None or new is None:
            continue
        if new not in _ACCEPTS.get(old, {old}):
            raise ConfigError(f"override '{override}': key '{key}' expects {old}, got {new}")


def _is_interpolation(cfg: DictConfig, key: str) -> bool:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    return isinstance(parent, DictConfig) and leaf in parent and OmegaConf.is_interpolation(parent, leaf)


def validate(cfg: DictConfig) -> None:
    """Run before any data is generated or model built."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    group_choices = [o for o in overrides if "=" in o and _is_group_override(o)]
    reference = compose(config_name=HydraConfig.get().job.config_name, overrides=group_choices)
    check_override_types(cfg, overrides, reference)
    check_run_name(cfg)
    check_init(cfg)
    check_batches(cfg)
    check_stages(cfg)
    check_connections(cfg)


def check_run_name(cfg: DictConfig) -> None:
    """`run_name` is one directory name (it also becomes part of the wandb run id)."""
    import re

    name = str(cfg.get("run_name") or "")
    if not re.fullmatch(r"[A-Za-z0-9_.,=+-]+", name) or set(name) == {"."}:
        raise ConfigError(f"run_name={name!r} must be one directory name: letters, digits and _ . , = + - "
                          "(no '/', spaces or ':')")


def check_batches(cfg: DictConfig) -> None:
    """Batch sizes that can carry a sample (0 would divide by zero after the model is built, or validate
    nothing)."""
    for key in ("batch_size", "val_batch_size"):
        value = OmegaConf.select(cfg, f"data.{key}", default=None)
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"data.{key}={value} must be a positive number of samples")


def check_init(cfg: DictConfig) -> None:
    """An experiment that starts from pre-trained weights (no stage of its own trains them) needs them."""
    if cfg.get("requires_init") and not cfg.get("init_from"):
        raise ConfigError(f"experiment {cfg.name} starts from a pre-trained tokenizer (requires_init=true): "
                          "set init_from=RUN_DIR_OR_CKPT")


def check_stages(cfg: DictConfig) -> None:
    """Every stage builds, names groups that exist in this experiment, and sets an lr for each."""
    from dataclasses import fields

    from vistok.training.stages import Stage, stages_from_config

    if not cfg.get("stages"):
        raise ConfigError("the experiment defines no 'stages'")
    known = sorted(f.name for f in fields(Stage) if f.name != "name")
    for name, stage in cfg.stages.items():
        if stage is not None and not OmegaConf.is_dict(stage):
            raise ConfigError(f"stages.{name} must be a mapping of stage fields, got {stage!r}")
        for key in stage or {}:
            if key not in known:
                raise ConfigError(f"stages.{name}.{key} is not a stage field; stage fields: {known}")
    try:
        stages = stages_from_config(cfg.stages, cfg.get("max_steps_per_stage"), cfg.get("stage_defaults"))
    except (TypeError, ValueError) as exn:
        raise ConfigError(f"stages: {exn}") from exn
    generation = bool(OmegaConf.select(cfg, "module.generation", default=False))
    present = {"llm": cfg.get("llm") is not None, "projector": cfg.get("projector") is not None,
               "visual_head": generation,
               "discriminator": OmegaConf.select(cfg, "module.discriminator") is not None}
    for stage in stages:
        if stage.generation_weight > 0 and not generation:
            raise ConfigError(f"stages.{stage.name}.generation_weight={stage.generation_weight} trains text-to-image, "
                              "but module.generation is false (no visual head); set module.generation=true")
        for group in stage.train:
            if not present.get(group, True):
                key = {"discriminator": "module.discriminator", "visual_head": "module.generation"}.get(group, group)
                raise ConfigError(f"stages.{stage.name}.train names '{group}', but this experiment has no "
                                  f"{group} ({key} is {'false' if group == 'visual_head' else 'null'})")
            try:
                lr = stage.lr_for(group)
            except KeyError as exn:
                raise ConfigError(f"stages.{stage.name}.lr: {exn.args[0]}") from exn
            if not lr > 0:  # 0 freezes the group while it still pays for gradients; < 0 ascends; NaN
                key = "tokenizer" if group in ("encoder", "quantizer", "decoder") else group
                raise ConfigError(f"stages.{stage.name}.lr.{key}={lr} cannot train '{group}': a trained group "
                                  "needs a learning rate > 0 (leave a group out of 'train' to freeze it)")


def _llm_input(cfg: DictConfig) -> type:
    """The visual-input adapter class `llm_input._target_` names (imported, not built)."""
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, "llm_input._target_")
    if target is None:
        raise ConfigError("llm_input is not set: choose how the LLM reads visual tokens (llm_input=embeddings "
                          "or llm_input=indices)")
    return get_class(target)


def check_connections(cfg: DictConfig) -> None:
    """The tokenizer's tokens must fit the LLM: a projector where one is needed, pooling that the token
    count allows, and a visual + caption sequence within the LLM's positions. Built on the meta device:
    shapes only, no memory, no weights."""
    if cfg.get("llm") is None:
        return
    reads_embeddings = _llm_input(cfg).needs_projector
    if reads_embeddings and cfg.get("projector") is None:
        raise ConfigError("llm_input=embeddings feeds codebook embeddings through a projector, but "
                          "projector is null; choose one (projector=mlp) or use llm_input=indices")
    num_tokens = _tokenizer_num_tokens(cfg)
    if num_tokens is None:
        return
    visual = num_tokens
    pool = OmegaConf.select(cfg, "projector.pool_tokens", default=None) if reads_embeddings else None
    if pool is not None:
        if pool > num_tokens:
            resolution = OmegaConf.select(cfg, "data.resolution")
            raise ConfigError(f"projector.pool_tokens={pool} is more than the {num_tokens} tokens the "
                              f"tokenizer emits at data.resolution={resolution}; it must be <= {num_tokens}")
        visual = pool
    positions, source = _llm_positions(cfg)
    caption = int(OmegaConf.select(cfg, "module.max_caption_tokens", default=0) or 0)
    if positions is not None and visual + caption > positions:
        raise ConfigError(
            f"the LLM sequence would be {visual} visual tokens + {caption} caption tokens "
            f"(module.max_caption_tokens) = {visual + caption} positions, more than the LLM's {positions} "
            f"({source}); lower data.resolution, pool the tokens (projector=swiglu projector.pool_tokens=N) "
            f"or use an LLM with more positions")


def _tokenizer_num_tokens(cfg: DictConfig) -> int | None:
    """Tokens per image, from the tokenizer built on the meta device; None if it cannot be built there
    (the real build then reports the problem itself)."""
    import torch
    from hydra.utils import instantiate

    try:
        with torch.device("meta"):
            return int(instantiate(cfg.tokenizer).num_tokens)
    except Exception:  # noqa: BLE001 - this check must never be the reason a buildable config fails
        return None


def _llm_positions(cfg: DictConfig) -> tuple[int | None, str]:
    """The LLM's position limit and the key (or file) it comes from; None when it cannot be read yet."""
    import json
    import os

    built = OmegaConf.select(cfg, "llm.build.max_position_embeddings", default=None)
    if OmegaConf.select(cfg, "llm.build", default=None) is not None:
        return (int(built), "llm.build.max_position_embeddings") if built else (None, "")
    path = OmegaConf.select(cfg, "llm.path", default=None)
    if path is None:
        return None, ""
    config_file = os.path.join(os.path.expanduser(str(path)), "config.json")
    if not os.path.isdir(os.path.expanduser(str(path))):
        raise ConfigError(f"llm.path={path} does not exist (a local Hugging Face model directory is "
                          "expected)")
    if not os.path.isfile(config_file):
        return None, ""
    with open(config_file) as handle:
        config = json.load(handle)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(config.get(key), int):
            return config[key], f"{key} in {config_file}"
    return None, ""


def _is_group_override(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return "/" in key or key in HydraConfig.get().runtime.choices
