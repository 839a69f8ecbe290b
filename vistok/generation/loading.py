"""A text-to-image generator from a training run directory (its newest finished stage's checkpoint)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate

from vistok.generation.generator import TextToImage
from vistok.models.visual_head import build_visual_head
from vistok.training.artifacts import locate
from vistok.training.checkpointing import CONFIG_KEY
from vistok.training.sharding import load_checkpoint


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_generator(source: str | Path) -> TextToImage:
    """RUN_DIR (or a .ckpt inside one) -> TextToImage with the checkpoint's tokenizer, LLM, projector and head.

    The model is rebuilt from the resolved config stored in the checkpoint; the LLM is loaded from its
    `llm.path` (the run's cache), then every part takes its weights from the checkpoint strictly.
    """
    from vistok.models.llm import CausalLM

    ckpt, run_dir = locate(source)
    checkpoint = load_checkpoint(ckpt)
    config, state = checkpoint.get(CONFIG_KEY), checkpoint["state_dict"]
    if not config or not config.get("llm"):
        raise ValueError(f"{ckpt} was not written by a joint tokenizer + LLM run (no llm in its config)")
    if not any(k.startswith("visual_head.") for k in state):
        raise ValueError(f"{ckpt} has no visual head: the run did not train generation (module.generation=true)")
    module_cfg = config.get("module") or {}
    tokenizer = instantiate(config["tokenizer"])
    tokenizer.load_state_dict(_part(state, "tokenizer."))
    llm = CausalLM(config["llm"]["path"], dtype=config["llm"].get("dtype", "float32"))
    llm_input = module_cfg.get("llm_input", "embeddings")
    if llm_input == "indices":
        llm.add_visual_vocab(tokenizer.codebook_size)
    llm.load_state_dict(_part(state, "llm."))
    projector = None
    if llm_input == "embeddings":
        projector = instantiate(config["projector"], in_dim=tokenizer.embed_dim, out_dim=llm.hidden_size)
        projector.load_state_dict(_part(state, "projector."))
    head = build_visual_head(tokenizer, llm.hidden_size)
    head.load_state_dict(_part(state, "visual_head."))
    return TextToImage(tokenizer, llm, head, projector, llm_input, int(module_cfg.get("max_caption_tokens", 24)))
