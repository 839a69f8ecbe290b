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
    if not cfg.get("stages"):
        raise ConfigError("the experiment defines no 'stages'")
    for name, stage in cfg.stages.items():
        if stage is not None and not OmegaConf.is_dict(stage):
            raise ConfigError(f"stages.{name} must be a mapping of stage fields, got {stage!r}")


def _is_group_override(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return "/" in key or key in HydraConfig.get().runtime.choices
