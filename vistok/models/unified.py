"""The unified model: a tokenizer, the adapter through which an LLM reads its tokens, the LLM and the LLM's
visual head. Both directions of ETT's model live here, once:

    understanding  [visual inputs][caption]  -> caption loss (text tokens only)
    generation     [<bos> prompt][visual inputs] -> the visual head predicts each visual token's codes

Training (`vistok.training.module`), generation (`vistok.generation`), export and sharding all use this one
object; stages, optimisers, the GAN and logging stay on the training side. Plain single-device PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.losses.generation import GenerationLoss, visual_token_loss
from vistok.models.llm import CaptionOutput
from vistok.models.sequence import align_targets, build_sequence
from vistok.models.visual_head import build_visual_head
from vistok.models.visual_input import ProjectedEmbeddings, VisualInput
from vistok.tokenizers.base import Tokenizer, TokenizerOutput

PARTS = ("tokenizer", "projector", "llm", "visual_head")  # child names: the state-dict prefixes of each part


class UnifiedModel(nn.Module):
    """Tokenizer (+ visual-input adapter + causal LM + visual head).

    Args:
        tokenizer: any `Tokenizer`.
        llm: a `vistok.models.llm.CausalLM`, or None for a tokenizer alone.
        projector: tokenizer embeddings (B, N, D) -> (B, N, hidden), for adapters that read embeddings.
        llm_input: the `VisualInput` adapter (default `ProjectedEmbeddings`).
        generation: add the visual output head (text-to-image: caption -> the tokenizer's codes).
        max_caption_tokens: caption length cap for the LLM, eos included.
    """

    def __init__(self, tokenizer: Tokenizer, llm: nn.Module | None = None, projector: nn.Module | None = None,
                 llm_input: VisualInput | None = None, generation: bool = False, max_caption_tokens: int = 24):
        super().__init__()
        self.tokenizer, self.llm, self.projector = tokenizer, llm, projector
        self.llm_input = llm_input or ProjectedEmbeddings()
        self.max_caption_tokens = max_caption_tokens
        if llm is not None:
            self.llm_input.attach(self)
        self.visual_head = self._visual_head() if generation else None

    def _visual_head(self) -> nn.Module:
        """Generation needs one LLM input per visual token: no LLM, or a pooling projector, is refused."""
        if self.llm is None:
            raise ValueError("generation=true needs an llm (the LLM writes the visual tokens)")
        pooled = getattr(self.projector, "pool_tokens", None)
        if pooled is not None:
            raise ValueError(f"generation needs one LLM input per visual token, but the projector pools the "
                             f"{self.tokenizer.num_tokens} tokens to {pooled}; set projector.pool_tokens=null")
        return build_visual_head(self.tokenizer, self.llm.hidden_size)

    def check_budgets(self, budgets: list[int]) -> None:
        """TokenFLEX budgets the LLM must be able to read; raises at construction, not mid-run."""
        if self.llm is not None and budgets:
            self.llm_input.check_budgets(self, budgets)

    # ---- the LLM's view of visual tokens ---------------------------------------------------------
    def visual_inputs(self, out: TokenizerOutput, budget: int | None = None) -> torch.Tensor:
        """Tokenizer output -> LLM input embeddings (B, N', hidden); N' = `budget` when given (TokenFLEX)."""
        return self.llm_input.from_output(self, out, budget)

    def visual_embeddings(self, indices: torch.Tensor) -> torch.Tensor:
        """Ids the LLM wrote (B, n, C) -> LLM inputs (B, n, hidden), exactly as training fed them."""
        return self.llm_input.from_indices(self, indices)

    # ---- the two directions ----------------------------------------------------------------------
    def caption_loss(self, out: TokenizerOutput, captions: list[str], valid: torch.Tensor | None = None,
                     budget: int | None = None) -> CaptionOutput:
        """Understanding: next-token loss on the captions after the visual inputs. Rows with `valid` (B,) False
        have no labelled tokens (padding rows)."""
        ids, attention = self.llm.tokenize_captions(captions, self.max_caption_tokens)
        if valid is not None:
            attention = attention & valid.to(attention.device)[:, None]
        return self.llm(self.visual_inputs(out, budget), ids, attention)

    def generation_loss(self, out: TokenizerOutput, captions: list[str],
                        valid: torch.Tensor | None = None) -> GenerationLoss:
        """Text-to-image: `[<bos> caption][visual tokens]`, the visual head predicting each visual token's codes
        from the prompt and the tokens before it. Rows with `valid` (B,) False are not scored (padding rows)."""
        ids, attention = self.llm.tokenize_prompts(captions, self.max_caption_tokens)
        sequence = build_sequence(self.llm.embed_text(ids), attention, self.visual_inputs(out))
        logits = self.visual_head(self.llm.hidden_states(sequence.inputs_embeds, sequence.attention))
        targets = align_targets(self.visual_head.targets(self.tokenizer, out.indices), sequence.prompt_length)
        scored = sequence.predicts_visual
        if valid is not None:
            scored = scored & valid.to(scored.device)[:, None]
        return visual_token_loss(logits, targets, scored)

    def generate_captions(self, out: TokenizerOutput) -> list[str]:
        """Greedy captions of the tokenizer output's images."""
        return self.llm.generate_captions(self.visual_inputs(out), max_new_tokens=self.max_caption_tokens)


def model_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unified model's weights in a training checkpoint's state dict: the training module keeps them under
    `model.`; checkpoints of earlier versions kept the parts (`tokenizer.*`, `llm.*`, ...) at the top level."""
    if any(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in PARTS}
