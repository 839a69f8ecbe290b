"""A text-to-image generator from a training run directory (its newest finished stage's checkpoint)."""

from __future__ import annotations

from pathlib import Path

import torch

from vistok import untrusted
from vistok.checkpoint_files import CONFIG_KEY, load_checkpoint, locate
from vistok.generation.generator import TextToImage
from vistok.models.unified import UnifiedModel, model_weights
from vistok.models.visual_input import adapter_from_config


def _part(weights: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def load_generator(source: str | Path) -> TextToImage:
    """RUN_DIR (or a .ckpt inside one) -> TextToImage with the checkpoint's tokenizer, LLM, projector and head.

    The model is rebuilt from the resolved config stored in the checkpoint, which is data from outside the
    process however safely the checkpoint loads: the tokenizer and projector are built through
    `vistok.untrusted` (allow-listed classes, sizes checked against the checkpoint's tensors first), the adapter
    is one of the two known classes. The LLM is loaded from its `llm.path` (the run's cache, local files only),
    then the whole model takes its weights from the checkpoint strictly.
    """
    ckpt, _ = locate(source)
    checkpoint = load_checkpoint(ckpt)
    config, weights = checkpoint.get(CONFIG_KEY), model_weights(checkpoint["state_dict"])
    if not config or not config.get("llm"):
        raise ValueError(f"{ckpt} was not written by a joint tokenizer + LLM run (no llm in its config)")
    if not any(k.startswith("visual_head.") for k in weights):
        raise ValueError(f"{ckpt} has no visual head: the run did not train generation (module.generation=true)")
    model = _build_model(config, weights, str(ckpt))
    model.load_state_dict(weights)
    return TextToImage(model)


def _build_model(config: dict, weights: dict[str, torch.Tensor], origin: str) -> UnifiedModel:
    from vistok.models.llm import CausalLM

    module_cfg = config.get("module") or {}
    tokenizer = untrusted.build(config["tokenizer"], f"{origin} tokenizer",
                                untrusted.weight_shapes(_part(weights, "tokenizer")))
    llm = CausalLM(str(config["llm"]["path"]), dtype=str(config["llm"].get("dtype", "float32")))
    # Checkpoints of earlier versions name the adapter by string under module.llm_input.
    adapter = adapter_from_config(config.get("llm_input") or module_cfg.get("llm_input", "embeddings"))
    projector = None
    if adapter.needs_projector:
        projector = untrusted.build(config["projector"], f"{origin} projector",
                                    untrusted.weight_shapes(_part(weights, "projector")),
                                    in_dim=tokenizer.embed_dim, out_dim=llm.hidden_size)
    return UnifiedModel(tokenizer, llm, projector, adapter, generation=True,
                        max_caption_tokens=int(module_cfg.get("max_caption_tokens", 24)))
