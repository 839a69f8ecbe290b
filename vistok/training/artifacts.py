"""Find a run's checkpoints and turn them into an export directory (used by scripts.export)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from vistok import untrusted
from vistok.export import cpu_state, save_tokenizer, write_directory
from vistok.checkpoint_files import load_checkpoint, locate
from vistok.models.unified import UnifiedModel, model_weights


def read_run_config(run_dir: Path, key: str) -> dict:
    """One subtree of a run directory's `.hydra/config.yaml`, checked as a config from outside the process.

    A run directory may come from anyone: its plain references (`${tokenizer.embed_dim}`) are followed, but
    no resolver runs (`vistok.untrusted`)."""
    path = run_dir / ".hydra" / "config.yaml"
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    try:
        subtree = untrusted.resolve_references(raw, key)
        untrusted.check_config(subtree, f"{path}: {key}")
    except untrusted.UntrustedConfigError as error:
        raise untrusted.UntrustedConfigError(f"{path}: {error}") from error
    return subtree


def tokenizer_config(run_dir: Path) -> dict:
    """The `tokenizer` subtree of the run's config, references followed and checked."""
    return read_run_config(run_dir, "tokenizer")


def tokenizer_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tokenizer weights (EMA copy where the run kept one) and the checkpoint's step info.

    `ckpt` is a checkpoint file or an FSDP2 checkpoint directory (consolidated in memory here)."""
    checkpoint = load_checkpoint(ckpt)
    state = model_weights(checkpoint["state_dict"])
    prefix = "ema_tokenizer." if any(k.startswith("ema_tokenizer.") for k in state) else "tokenizer."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{ckpt} holds no tokenizer weights")
    return weights, {"global_step": checkpoint.get("global_step"), **checkpoint.get("vistok", {})}


def export_run(path: str | Path, out_dir: str | Path, fmt: str = "vistok", overwrite: bool = False) -> Path:
    """Write an export directory (`vistok` or `diffusers` VQModel format) from a run directory or checkpoint.

    `out_dir` must be new (or empty); an earlier export there is replaced only with `overwrite`."""
    from tqdm import tqdm

    _check_out_dir(Path(out_dir), fmt, overwrite)  # refused before the checkpoint is read
    with tqdm(total=3, desc="export", unit="step") as progress:  # loading dominates for large checkpoints
        ckpt, run_dir = locate(path)
        config = tokenizer_config(run_dir)
        progress.set_postfix_str(f"reading {ckpt.name}")
        weights, info = tokenizer_state(ckpt)
        progress.update()
        tokenizer = untrusted.build(config, f"{run_dir} tokenizer", expected=untrusted.weight_shapes(weights))
        tokenizer.load_state_dict(weights, strict=True)
        tokenizer.eval()
        progress.update()
        progress.set_postfix_str(f"writing {Path(out_dir).name}")
        if fmt == "diffusers":
            from vistok.export_diffusers import save_vqmodel

            out = save_vqmodel(tokenizer, out_dir, overwrite=overwrite)
        else:
            meta = _export_meta(ckpt, run_dir, info)
            out = save_tokenizer(tokenizer, config, out_dir, meta, overwrite=overwrite)
        progress.update()
    return out


def _check_out_dir(out_dir: Path, fmt: str, overwrite: bool) -> None:
    from vistok.export import check_destination, is_vistok_export

    if fmt == "diffusers":
        from vistok.export_diffusers import is_vqmodel_export

        check_destination(out_dir, is_vqmodel_export, overwrite)
    else:
        check_destination(out_dir, is_vistok_export, overwrite)


def _export_meta(ckpt: Path, run_dir: Path, info: dict) -> dict:
    meta = {"source": str(ckpt.resolve()), **info}
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        import json

        meta["metrics"] = json.loads(metrics.read_text()).get("final", {})
    return meta


LLM_EXPORT_INFO = ("llm_input", "visual_offset", "num_visual_tokens", "tokenizer")  # the keys of vistok.json


def save_llm(model: UnifiedModel, projector_config: dict | None, out_dir: str | Path) -> Path:
    """The jointly tuned LLM as a Hugging Face directory (`from_pretrained`) plus the projector beside it,
    written whole or not at all; an earlier LLM export there is replaced, anything else refused.

    <out_dir>/                 config.json, model.safetensors, tokenizer files (transformers)
    <out_dir>/projector/       model.safetensors + config.yaml (rebuild with vistok.untrusted.build)
    <out_dir>/vistok.json      how visual tokens enter: llm_input, visual_offset (index arm), num_tokens
    """
    import json

    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        model.llm.model.save_pretrained(str(folder))
        model.llm.tokenizer.save_pretrained(str(folder))
        if model.projector is not None and projector_config is not None:
            (folder / "projector").mkdir()
            save_file(cpu_state(model.projector), str(folder / "projector" / "model.safetensors"))
            OmegaConf.save(OmegaConf.create(projector_config), folder / "projector" / "config.yaml")
        info = {"llm_input": model.llm_input.name, "visual_offset": getattr(model.llm, "visual_offset", None),
                "num_visual_tokens": model.tokenizer.num_tokens, "tokenizer": "../tokenizer"}
        (folder / "vistok.json").write_text(json.dumps(info, indent=2))

    return write_directory(out_dir, write, is_llm_export, overwrite=True)


def is_llm_export(path: Path) -> bool:
    """A directory `save_llm` wrote: its vistok.json holds exactly the keys `save_llm` writes."""
    import json

    try:
        info = json.loads((path / "vistok.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and set(info) == set(LLM_EXPORT_INFO)
