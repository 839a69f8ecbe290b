"""The one loader for configs that come from outside the process: data, never code.

Exports (`config.yaml` / `config.json`), a Hub repo's config, a run directory's `.hydra/config.yaml` and the
config stored inside a checkpoint may have been written by anyone. Every module built from such a config is
built here, and only here:

- `_target_` must be one of `ALLOWED_TARGETS`, the exact tokenizer / encoder / decoder / quantizer / projector
  / teacher classes that vistok's own configs build (no prefixes: a re-exported function such as Hydra's
  `instantiate` or `safetensors.torch.save_file` lives under `vistok.` too);
- Hydra's other special keys (`_partial_`, `_args_`, `_recursive_`, `_convert_`) are refused;
- interpolations are never resolved by OmegaConf: resolvers (`${oc.create:...}`, `${oc.env:...}`) are refused
  everywhere, and a run directory's plain references between its own keys (`${tokenizer.embed_dim}`) are
  followed here, by a resolver that only reads values;
- sizes are checked against the weights before anything is allocated: the module is first built on the meta
  device and every parameter and buffer shape is compared with what the weights hold.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

ALLOWED_TARGETS = frozenset({
    # tokenizers (configs/tokenizer/*.yaml)
    "vistok.tokenizers.vq.VQTokenizer",
    "vistok.tokenizers.dual.DualTokenizer",
    "vistok.tokenizers.binary1d.Binary1DTokenizer",
    "vistok.tokenizers.flex.FlexTokenizer",
    # encoders and decoders (configs/tokenizer/encoder, decoder and the families' own blocks)
    "vistok.tokenizers.modules.conv.ConvEncoder",
    "vistok.tokenizers.modules.conv.ConvDecoder",
    "vistok.tokenizers.modules.diffusers_blocks.DiffusersEncoder",
    "vistok.tokenizers.modules.diffusers_blocks.DiffusersDecoder",
    "vistok.tokenizers.modules.dual.DualEncoder",
    "vistok.tokenizers.modules.dual.DualDecoder",
    "vistok.tokenizers.modules.dual.LayeredEncoder",
    "vistok.tokenizers.modules.dual.SemanticHead",
    "vistok.tokenizers.modules.flow.FlowDecoder",
    "vistok.tokenizers.modules.vit.LatentTokenEncoder",
    "vistok.tokenizers.modules.vit.LatentTokenDecoder",
    # the flex family's length dropouts (configs/tokenizer/dropout)
    "vistok.tokenizers.flex.NestedDropout",
    "vistok.tokenizers.flex.TailDropout",
    # quantizers (configs/tokenizer/quantizer)
    "vistok.tokenizers.quantizers.vq.VectorQuantizer",
    "vistok.tokenizers.quantizers.fsq.FiniteScalarQuantizer",
    "vistok.tokenizers.quantizers.lfq.LookupFreeQuantizer",
    "vistok.tokenizers.quantizers.ibq.IndexBackpropQuantizer",
    "vistok.tokenizers.quantizers.binary.BinaryQuantizer",
    "vistok.tokenizers.quantizers.dual.SeparateCodebookQuantizer",
    "vistok.tokenizers.quantizers.dual.SharedIndexQuantizer",
    # projectors (configs/projector) and the saved mini-CLIP teacher
    "vistok.models.connector.MLPProjector",
    "vistok.models.connector.SwiGLUProjector",
    "vistok.teachers.mini_clip.MiniCLIP",
})
REFUSED_KEYS = ("_partial_", "_args_", "_recursive_", "_convert_")
PLAIN_VALUES = (str, int, float, bool, type(None))
# A reference to another key of the same config: `${a.b}`, `${.sibling}`, `${..uncle}`; no resolver call.
PLAIN_REFERENCE = re.compile(r"\$\{(\.*)([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")
MAX_REFERENCE_DEPTH = 32
# Buffers that are not saved (FSQ's implicit codebook, position tables) are rebuilt from the config; they may
# add this much beyond what the weights hold.
UNSAVED_BYTES_ALLOWANCE = 256 * 2**20


class UntrustedConfigError(ValueError):
    """A config from outside the process asks for something vistok does not build from such configs."""


# ---- checks -------------------------------------------------------------------------------------------


def check_config(node: Any, where: str = "tokenizer") -> None:
    """Raise `UntrustedConfigError` naming the first key that is not plain, allow-listed data."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            _check_key(node, key, where)
            check_config(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_config(value, f"{where}[{i}]")
    elif isinstance(node, str):
        if "${" in node:
            raise UntrustedConfigError(f"refusing the interpolation {node!r} at {where}: configs from "
                                       "outside the process are plain values (no ${...}, no resolvers)")
    elif not isinstance(node, PLAIN_VALUES):
        raise UntrustedConfigError(f"refusing a {type(node).__name__} at {where}: only plain values are read")


def _check_key(node: Mapping, key: Any, where: str) -> None:
    if not isinstance(key, str):
        raise UntrustedConfigError(f"refusing the key {key!r} at {where}: keys are strings")
    if key in REFUSED_KEYS:
        raise UntrustedConfigError(f"refusing '{key}' at {where}: only `_target_` trees of allow-listed "
                                   "classes are built from configs from outside the process")
    if key == "_target_" and not (isinstance(node[key], str) and node[key] in ALLOWED_TARGETS):
        raise UntrustedConfigError(f"refusing to instantiate '{node[key]}' at {where}: configs from outside "
                                   "the process may only build vistok's own tokenizer, projector and teacher "
                                   "classes (vistok.untrusted.ALLOWED_TARGETS)")


# ---- a run directory's plain references ---------------------------------------------------------------


def resolve_references(root: Mapping, key: str) -> Any:
    """`root[key]` with its plain references (`${data.resolution}`, `${.tau}`) replaced by the values they
    name, read from `root` (an unresolved config as plain containers). Resolvers are refused; values are
    only read, so nothing outside `root` is consulted."""
    if key not in root:
        raise UntrustedConfigError(f"the config has no '{key}' entry")
    return _resolve(root, root[key], [key], 0)


def _resolve(root: Mapping, value: Any, path: list, depth: int) -> Any:
    if depth > MAX_REFERENCE_DEPTH:
        raise UntrustedConfigError(f"references at {_dotted(path)} nest deeper than {MAX_REFERENCE_DEPTH} "
                                   "(a cycle?)")
    if isinstance(value, Mapping):
        return {k: _resolve(root, v, [*path, k], depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(root, v, [*path, i], depth) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = PLAIN_REFERENCE.fullmatch(value)
    if whole:
        target_path = _target_path(path, *whole.groups())
        return _resolve(root, _lookup(root, target_path, path), target_path, depth + 1)
    text = PLAIN_REFERENCE.sub(lambda m: str(_resolve(root, m.group(0), path, depth)), value)
    if "${" in text:
        raise UntrustedConfigError(f"refusing the interpolation {value!r} at {_dotted(path)}: only plain "
                                   "references to other keys are followed (no resolvers such as oc.env, "
                                   "oc.create)")
    return text


def _target_path(path: list, dots: str, dotted: str) -> list:
    """OmegaConf's rules: no dot = from the root; `.x` = beside the value; each further dot one level up."""
    parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    if not dots:
        return parts
    container = path[:-1]
    return [*container[:len(container) - (len(dots) - 1)], *parts]


def _lookup(root: Any, target: list, where: list) -> Any:
    node = root
    for part in target:
        found = (isinstance(node, Mapping) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if not found:
            raise UntrustedConfigError(f"the reference at {_dotted(where)} names {_dotted(target)}, which "
                                       "the config does not have")
        node = node[part]
    return node


def _dotted(path: list) -> str:
    return ".".join(str(p) for p in path)


# ---- building -----------------------------------------------------------------------------------------


def build(config: Mapping, where: str = "tokenizer", expected: Mapping[str, tuple[int, ...]] | None = None,
          **kwargs: Any) -> nn.Module:
    """Build the module a checked config describes (on the CPU).

    Args:
        config: a `_target_` tree from outside the process (checked here first).
        where: the config's name in error messages.
        expected: name -> shape of every tensor the weights hold (`weight_shapes`); when given, the module is
            first built on the meta device and refused unless its state dict has exactly these shapes.
        kwargs: extra constructor arguments of the root (e.g. a projector's `in_dim` / `out_dim`).
    """
    check_config(config, where)
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise UntrustedConfigError(f"{where} has no `_target_`: nothing to build")
    if expected is not None:
        check_sizes(config, expected, where, **kwargs)
    return _instantiate(config, kwargs, _cpu_device)


def check_sizes(config: Mapping, expected: Mapping[str, tuple[int, ...]], where: str = "tokenizer",
                **kwargs: Any) -> None:
    """Refuse a config whose module would not hold exactly the `expected` tensors, without allocating it."""
    check_config(config, where)
    try:
        meta = _instantiate(config, kwargs, _meta_device)
    except UntrustedConfigError:
        raise
    except Exception as error:  # a constructor's own complaint about its arguments, whatever its type
        raise UntrustedConfigError(f"{where} cannot be built: {type(error).__name__}: {error}") from error
    saved = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    renamed = getattr(meta, "legacy_keys", {})  # a tokenizer's names of earlier versions, renamed on load
    problems = _shape_problems(saved, {renamed.get(name, name): tuple(shape) for name, shape in expected.items()})
    if problems:
        raise UntrustedConfigError(f"{where} does not describe its weights ({'; '.join(problems[:5])}"
                                   f"{'; ...' if len(problems) > 5 else ''}): refusing to build it")
    unsaved = sum(_nbytes(b) for name, b in meta.named_buffers() if name not in saved)
    allowance = max(UNSAVED_BYTES_ALLOWANCE, sum(_nbytes(t) for t in meta.state_dict().values()))
    if unsaved > allowance:
        raise UntrustedConfigError(f"{where} would build {unsaved / 2**20:.0f} MiB of buffers that are "
                                   f"not in its weights (allowed: {allowance / 2**20:.0f} MiB): refusing to "
                                   "build it")


def weight_shapes(tensors_or_file: Mapping[str, torch.Tensor] | str | Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of a state dict, or of a safetensors file read from its header alone (no tensor is
    loaded)."""
    if isinstance(tensors_or_file, Mapping):
        return {name: tuple(t.shape) for name, t in tensors_or_file.items()}
    from safetensors import safe_open

    path = Path(tensors_or_file)
    try:
        with safe_open(str(path), framework="pt") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except Exception as error:  # safetensors raises its own error types for truncated / corrupt files
        raise ValueError(f"{path} is unreadable (truncated or corrupt): {error}") from error


def _shape_problems(built: dict[str, tuple], expected: dict[str, tuple]) -> list[str]:
    problems = [f"{name}: config {built[name]}, weights {expected[name]}"
                for name in built if name in expected and built[name] != expected[name]]
    problems += [f"{name} is missing from the weights" for name in built if name not in expected]
    problems += [f"{name} is in the weights but not in the config" for name in expected if name not in built]
    return problems


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _instantiate(node: Any, extra: Mapping[str, Any],
                 device_for: Callable[[str, Mapping], torch.device]) -> Any:
    """Build a checked tree bottom-up: children first, then the class at this node."""
    if isinstance(node, list):
        return [_instantiate(v, {}, device_for) for v in node]
    if not isinstance(node, Mapping):
        return node
    kwargs = {k: _instantiate(v, {}, device_for) for k, v in node.items() if k != "_target_"}
    kwargs.update(extra)
    if "_target_" not in node:
        return kwargs
    target = node["_target_"]
    with device_for(target, kwargs):
        return _allowed_class(target)(**kwargs)


def _allowed_class(target: str) -> type[nn.Module]:
    if target not in ALLOWED_TARGETS:  # checked before any build; kept here so no path can skip it
        raise UntrustedConfigError(f"refusing to instantiate '{target}'")
    module_name, _, name = target.rpartition(".")
    found = getattr(importlib.import_module(module_name), name)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise UntrustedConfigError(f"refusing to instantiate '{target}': not a module class")
    return found


def _cpu_device(target: str, kwargs: Mapping) -> torch.device:
    return torch.device("cpu")


# FSQ computes its codebook size from a tensor while it is built (`.item()`), which the meta device cannot
# do: it is built on the CPU, after a check of what it allocates (its implicit codebook and projections).
CPU_BUILT_ELEMENTS = {
    "vistok.tokenizers.quantizers.fsq.FiniteScalarQuantizer":
        lambda kw: len(kw["levels"]) * (math.prod(int(v) for v in kw["levels"]) + 2 * int(kw.get("dim", 0))),
}
MAX_CPU_BUILT_ELEMENTS = 2**26


def _meta_device(target: str, kwargs: Mapping) -> torch.device:
    elements = CPU_BUILT_ELEMENTS.get(target)
    if elements is None:
        return torch.device("meta")
    try:
        count = elements(kwargs)
    except (KeyError, TypeError, ValueError) as error:
        raise UntrustedConfigError(f"'{target}' has arguments that cannot be sized: {error}") from error
    if count > MAX_CPU_BUILT_ELEMENTS:
        raise UntrustedConfigError(f"'{target}' would allocate {count:,} elements while it is built (more "
                                   f"than {MAX_CPU_BUILT_ELEMENTS:,}): refusing to build it")
    return torch.device("cpu")
