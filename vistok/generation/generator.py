"""Captions -> images: the LLM writes the tokenizer's visual tokens one by one, the tokenizer decodes them."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from vistok.generation.sampling import SamplingOptions, guide, sample_bits, sample_codes
from vistok.models.sequence import build_sequence
from vistok.models.unified import UnifiedModel


@dataclass
class GeneratedImages:
    """Result of `TextToImage.generate`.

    Attributes:
        captions: the B prompts.
        indices: (B, N, C) int64 tokenizer ids the LLM wrote.
        images: (B, 3, H, W) decoded images in [-1, 1].
    """

    captions: list[str]
    indices: torch.Tensor
    images: torch.Tensor


@contextmanager
def eval_mode(*modules: nn.Module | None):
    """Every submodule in eval mode inside, each restored to its own mode after (some stay frozen on purpose)."""
    modes = [(m, m.training) for module in modules if module is not None for m in module.modules()]
    for module in modules:
        if module is not None:
            module.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


class TextToImage:
    """Autoregressive text-to-image with a unified tokenizer.

    Args:
        model: a `UnifiedModel` with a visual head: the LLM writes the tokenizer's codes, fed back through the
            model's own adapter; the tokenizer's decoder makes the pixels.
        use_cache: write with the LLM's key/value cache: the prompts are read once, then each step feeds only
            the newest visual token (O(N) LLM work for N tokens). False re-runs the whole sequence for every
            token (O(N^2)); it writes the same ids and is kept as the reference the cache is checked against.
    """

    def __init__(self, model: UnifiedModel, use_cache: bool = True):
        if model.visual_head is None:
            raise ValueError("this model has no visual head: train it with module.generation=true")
        self.model, self.use_cache = model, use_cache
        self.tokenizer, self.llm, self.visual_head = model.tokenizer, model.llm, model.visual_head

    @torch.no_grad()
    def sample_indices(self, captions: list[str], options: SamplingOptions, progress: bool = True) -> torch.Tensor:
        """Write N visual tokens per caption: (B,) captions -> (B, N, C) int64 ids.

        With guidance the conditional and unconditional (empty caption) branches run as one batch of 2B rows
        and share the tokens written so far.
        """
        if not captions:
            raise ValueError("no captions to generate from")
        prompts = list(captions) + ([""] * len(captions) if options.guided else [])
        ids, attention = self.llm.tokenize_prompts(prompts, self.model.max_caption_tokens)
        prompt_embeds = self.llm.embed_text(ids)  # (B or 2B, T, H)
        generator = torch.Generator(device=ids.device).manual_seed(options.seed)
        steps = tqdm(range(self.tokenizer.num_tokens), desc="visual tokens", disable=not progress, leave=False)
        write = self._write_cached if self.use_cache else self._write_uncached
        with eval_mode(self.model):
            tokens = write(prompt_embeds, attention, steps, options, generator)
        return torch.stack(tokens, dim=1)

    def _write_cached(self, prompt_embeds: torch.Tensor, attention: torch.Tensor, steps, options: SamplingOptions,
                      generator: torch.Generator) -> list[torch.Tensor]:
        """One (B, C) token per step: the prompts fill the cache once, then each step feeds only the token
        drawn last and reads every earlier position's keys and values from the cache."""
        decoder = self.llm.model.base_model
        dtype = self.llm.model.get_input_embeddings().weight.dtype
        mask, inputs, cache, tokens = attention.long(), prompt_embeds, None, []
        for _ in steps:
            if tokens:
                inputs = self.model.visual_embeddings(self._both_branches(tokens[-1][:, None], options))
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = decoder(inputs_embeds=inputs.to(dtype), attention_mask=mask, past_key_values=cache,
                          use_cache=True)
            cache = out.past_key_values
            tokens.append(self._draw(self._logits(out.last_hidden_state[:, -1], options), options, generator))
        return tokens

    def _write_uncached(self, prompt_embeds: torch.Tensor, attention: torch.Tensor, steps,
                        options: SamplingOptions, generator: torch.Generator) -> list[torch.Tensor]:
        """The reference loop: each step re-runs the prompts and every token written so far."""
        tokens = []
        for _ in steps:
            written = torch.stack(tokens, dim=1) if tokens else None
            visual = (self.model.visual_embeddings(self._both_branches(written, options)) if written is not None
                      else prompt_embeds[:, :0])
            sequence = build_sequence(prompt_embeds, attention, visual)
            hidden = self.llm.hidden_states(sequence.inputs_embeds, sequence.attention)[:, -1]
            tokens.append(self._draw(self._logits(hidden, options), options, generator))
        return tokens

    @staticmethod
    def _both_branches(written: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
        """Tokens (B, n, C) as the LLM batch reads them: repeated for the unconditional rows under guidance."""
        return written.repeat(2, 1, 1) if options.guided else written

    def _logits(self, hidden: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
        """Logits of the next visual token from the last position's hidden state (B or 2B, H): (B, C, V) or
        (B, K), guided when guidance is on."""
        logits = self.visual_head(hidden).float()
        if not options.guided:
            return logits
        conditional, unconditional = logits.chunk(2)
        return guide(conditional, unconditional, options.guidance_scale)

    def _draw(self, logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator) -> torch.Tensor:
        """One token's ids (B, C) from its logits."""
        draw = sample_bits if self.visual_head.kind == "bits" else sample_codes
        return self.visual_head.to_indices(draw(logits, options, generator))

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N, C) ids -> (B, 3, H, W) images in [-1, 1]."""
        with eval_mode(self.tokenizer):
            return self.tokenizer.decode(self.tokenizer.lookup(indices), None).clamp(-1, 1)

    def generate(self, captions: list[str], options: SamplingOptions | None = None, batch_size: int = 64,
                 progress: bool = True) -> GeneratedImages:
        """Captions -> images, `batch_size` captions at a time."""
        options = options or SamplingOptions()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        indices, images = [], []
        for start in range(0, len(captions), batch_size):
            chunk = list(captions[start : start + batch_size])
            chunk_options = SamplingOptions(**{**options.__dict__, "seed": options.seed + start})
            ids = self.sample_indices(chunk, chunk_options, progress=progress)
            indices.append(ids)
            images.append(self.decode(ids))
        return GeneratedImages(list(captions), torch.cat(indices), torch.cat(images))
