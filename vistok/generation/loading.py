"""A text-to-image generator from a training run directory (its newest finished stage's checkpoint)."""

from __future__ import annotations

from pathlib import Path

import torch

from vistok import untrusted
from vistok.generation.generator import TextToImage
from vistok.models.visual_head import build_visual_head
from vistok.checkpoint_files import CONFIG_KEY, load_checkpoint, locate


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_generator(source: str | Path) -> TextToImage:
    """RUN_DIR (or a .ckpt inside one) -> TextToImage with the checkpoint's tokenizer, LLM, projector and head.

    The model is rebuilt from the resolved config stored in the checkpoint, which is data from outside the
    process however safely the checkpoint loads: the tokenizer and projector are built through
    `vistok.untrusted` (allow-listed classes, sizes checked against the checkpoint's tensors first). The LLM
    is loaded from its `llm.path` (the run's cache, local files only), then every part takes its weights
    from the checkpoint strictly.
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
    tokenizer_state = _part(state, "tokenizer.")
    tokenizer = untrusted.build(config["tokenizer"], f"{ckpt} tokenizer",
                                untrusted.weight_shapes(tokenizer_state))
    tokenizer.load_state_dict(tokenizer_state)
    llm = CausalLM(str(config["llm"]["path"]), dtype=str(config["llm"].get("dtype", "float32")))
    llm_input = module_cfg.get("llm_input", "embeddings")
    if llm_input == "indices":
        llm.add_visual_vocab(tokenizer.codebook_size)
    llm.load_state_dict(_part(state, "llm."))
    projector = None
    if llm_input == "embeddings":
        projector_state = _part(state, "projector.")
        projector = untrusted.build(config["projector"], f"{ckpt} projector",
                                    untrusted.weight_shapes(projector_state),
                                    in_dim=tokenizer.embed_dim, out_dim=llm.hidden_size)
        projector.load_state_dict(projector_state)
    head = build_visual_head(tokenizer, llm.hidden_size)
    head.load_state_dict(_part(state, "visual_head."))
    return TextToImage(tokenizer, llm, head, projector, llm_input, int(module_cfg.get("max_caption_tokens", 24)))
