"""The causal LM trained on captions with a visual prefix, and a tiny local LLM for tests.

Sequence layout used everywhere (training, accuracy, generation):

    position:  0 .. N-1          N .. N+T-1
    content:   [visual tokens]   [caption tokens ... eos] [pad ...]
    labels:    -100 ...          caption ids ...     eos   -100 ...

Hugging Face shifts labels inside the model, so the logits at position N-1 (the last visual token)
predict the first caption token: the visual prefix plays the role of <bos>.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vistok.cache import cached_at

IGNORE_INDEX = -100
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|bos|>", "<|eos|>", "<|pad|>"
# In every tiny-LLM directory: the build parameters that produced the model (see `vistok.cache.cached_at`).
MARKER_FILE = "vistok_tiny_llm.json"


def caption_length_summary(lengths: list[int], max_tokens: int) -> dict[str, int]:
    """Nearest-rank percentiles (p50, p90, p99) and the max of caption lengths in tokens, with how many
    of the `captions` exceed `max_tokens` and are therefore cut (see `CausalLM.caption_lengths`)."""
    ordered = sorted(lengths)
    if not ordered:
        return {"captions": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0, "truncated": 0}
    rank = lambda q: ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]  # noqa: E731
    return {"captions": len(ordered), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1],
            "truncated": sum(n > max_tokens for n in ordered)}


# --------------------------------------------------------------------------------------------------
# Tiny local LLM
# --------------------------------------------------------------------------------------------------


def build_text_tokenizer(captions: list[str], vocab_size: int = 512):
    """Trains a byte-level BPE on `captions` and wraps it as a transformers fast tokenizer.

    Byte-level means any string round-trips (decode(encode(x)) == x), even characters unseen in
    training. The vocabulary may come out smaller than `vocab_size` on a tiny corpus.

    Args:
        captions: training corpus.
        vocab_size: upper bound on the vocabulary size, special tokens included.

    Returns:
        A transformers tokenizer with bos/eos/pad set. In transformers v5 its class is
        `TokenizersBackend` (`PreTrainedTokenizerFast` is an alias), so never isinstance-check it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        # The full byte alphabet keeps every string encodable, whatever the corpus.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def _build_spec(captions: list[str], **params) -> dict:
    """The marker content: build parameters plus a hash of the tokenizer corpus."""
    digest = hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest()
    return {**params, "captions_sha256": digest, "num_captions": len(captions)}


def build_tiny_llm(
    out_dir: str,
    captions: list[str],
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> str:
    """Builds (or reuses) a randomly initialised Llama + BPE tokenizer trained on `captions`.

    Both are saved with `save_pretrained(out_dir)` (safetensors), so `CausalLM(out_dir)` loads them
    like any Hub checkpoint. A directory already holding a build with the same parameters is reused as is;
    one holding a build with other parameters is replaced, anything else is refused (FileExistsError). The
    save goes to a temporary directory renamed into place, so a crash never leaves half a model.

    Args:
        out_dir: target directory.
        captions: corpus for the BPE tokenizer.
        hidden_size, num_layers, num_heads, max_position_embeddings: Llama sizes.
        intermediate_size: MLP width; defaults to 4 * hidden_size.
        vocab_size: BPE vocabulary bound; the model's vocab is the tokenizer's actual size.
        seed: init seed; the caller's global RNG state is left untouched.

    Returns:
        out_dir.
    """
    out_dir = os.path.abspath(out_dir)
    params = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                  intermediate_size=intermediate_size or 4 * hidden_size, vocab_size=vocab_size,
                  max_position_embeddings=max_position_embeddings, seed=seed)
    cached_at(out_dir, _build_spec(captions, **params),
              lambda folder: _save_tiny_llm(folder, captions, **params), marker=MARKER_FILE)
    return out_dir


def _save_tiny_llm(folder: Path, captions: list[str], hidden_size: int, num_layers: int, num_heads: int,
                   intermediate_size: int, vocab_size: int, max_position_embeddings: int, seed: int) -> None:
    """Train the BPE tokenizer, initialise the Llama from `seed` and `save_pretrained` both into `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_text_tokenizer(captions, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


# --------------------------------------------------------------------------------------------------
# Caption LM wrapper
# --------------------------------------------------------------------------------------------------


@dataclass
class CaptionOutput:
    """Result of `CausalLM.forward`.

    Attributes:
        loss: scalar next-token cross-entropy, averaged over caption tokens (eos included).
        logits: (B, N+T, V) logits over the whole `[visual][caption]` sequence.
        labels: (B, N+T) unshifted targets; IGNORE_INDEX (-100) on visual positions and padding.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    resolved = getattr(torch, aliases.get(dtype, dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


class CausalLM(nn.Module):
    """A Hugging Face causal LM that reads a visual prefix and is trained to emit the caption.

    Args:
        path: local directory with a `save_pretrained` model and tokenizer (nothing is downloaded).
        dtype: parameter dtype, e.g. "float32" or "bfloat16".
        gradient_checkpointing: recompute activations in backward to save memory.

    Attributes:
        model: the transformers `*ForCausalLM`.
        tokenizer: its tokenizer (class `TokenizersBackend` in transformers v5).
        hidden_size: H, the width visual tokens must be projected to.
        visual_offset: id of the first visual-code row after `add_visual_vocab`, else None.
    """

    def __init__(self, path: str, dtype: str = "float32", gradient_checkpointing: bool = False):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"LLM directory not found: {path!r} (build one with vistok.models.llm.build_tiny_llm "
                "or point to a local save_pretrained directory; nothing is downloaded)"
            )
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_resolve_dtype(dtype), local_files_only=True
        )
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer in {path!r} has no eos token")
        if self.tokenizer.pad_token_id is None:
            # Padding positions are masked out of attention and loss, so any id works.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if gradient_checkpointing:
            self._enable_checkpointing()
        self.hidden_size: int = self.model.get_input_embeddings().embedding_dim
        self.visual_offset: int | None = None
        self.num_visual_codes = 0

    def _enable_checkpointing(self) -> None:
        # Non-reentrant checkpointing works even when no input requires grad (frozen embeddings).
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # v5 name; the old one warns
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.model.config.use_cache = False

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ---------------------------------------------------------------------------------------------
    # Embeddings and tokenization
    # ---------------------------------------------------------------------------------------------

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Looks up token embeddings: (B, T) int64 -> (B, T, H)."""
        return self.model.get_input_embeddings()(input_ids)

    def caption_lengths(self, captions: list[str]) -> list[int]:
        """Tokens each caption takes in the sequence, eos included: the count `max_length` bounds in
        `tokenize_captions` (and `tokenize_prompts`, where bos takes the place of eos)."""
        encoded = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        return [len(ids) + 1 for ids in encoded]

    def tokenize_captions(self, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenizes captions as `caption tokens + eos`, right-padded to the longest in the batch.

        No bos: the visual prefix plays the role of the start token. A caption longer than
        `max_length` is truncated and still ends with eos, so the model always learns to stop.

        Returns:
            ids: (B, T) int64 on the model's device, T <= max_length; pad id after the eos.
            attention: (B, T) bool, True on caption tokens and eos.
        """
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        encoded = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        rows = [ids[: max_length - 1] + [eos] for ids in encoded]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention[i, : len(row)] = True
        return ids.to(self.device), attention.to(self.device)

    def tokenize_prompts(self, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenizes captions as text-to-image prompts: `<bos> caption tokens`, left-padded.

        Left padding puts every prompt's last token right before the first visual token, so the output at
        position T-1 predicts visual token 0 in every row. An empty caption (the unconditional prompt of
        classifier-free guidance) is `<bos>` alone. Padding is masked from attention; the LLM's rotary
        positions are relative, so the left pad does not change what a row computes.

        Returns:
            ids: (B, T) int64 on the model's device, T <= max_length.
            attention: (B, T) bool, True on bos and caption tokens.
        """
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        encoded = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        start = self.tokenizer.bos_token_id
        start = self.tokenizer.eos_token_id if start is None else start  # LLMs without a bos token
        rows = [[start] + ids[: max_length - 1] for ids in encoded]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
            attention[i, length - len(row):] = True
        return ids.to(self.device), attention.to(self.device)

    def hidden_states(self, inputs_embeds: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states of the decoder for a sequence of input embeddings.

        Args:
            inputs_embeds: (B, L, H).
            attention: (B, L) bool, False on padding.

        Returns:
            (B, L, H) hidden states (what the text head and the visual head both read).
        """
        embeds = inputs_embeds.to(self.model.get_input_embeddings().weight.dtype)
        out = self.model.base_model(inputs_embeds=embeds, attention_mask=attention.long(), use_cache=False)
        return out.last_hidden_state

    def add_visual_vocab(self, num_codes: int) -> int:
        """Appends `num_codes` rows to the token embeddings for the discrete-index arm.

        Returns:
            The id of the first new row; code k is token `offset + k`.
        """
        if self.visual_offset is not None:
            raise RuntimeError("add_visual_vocab was already called on this model")
        offset = self.model.get_input_embeddings().num_embeddings
        self.model.resize_token_embeddings(offset + num_codes)
        self.visual_offset, self.num_visual_codes = offset, num_codes
        return offset

    def embed_visual_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """Embeds visual code ids: (B, N) int64 in [0, num_codes) -> (B, N, H)."""
        if self.visual_offset is None:
            raise RuntimeError("call add_visual_vocab before embed_visual_ids")
        return self.embed_text(indices + self.visual_offset)

    # ---------------------------------------------------------------------------------------------
    # Training
    # ---------------------------------------------------------------------------------------------

    def forward(self, visual: torch.Tensor, input_ids: torch.Tensor, attention: torch.Tensor) -> CaptionOutput:
        """Caption loss for a visual prefix.

        Args:
            visual: (B, N, H) projected visual tokens.
            input_ids: (B, T) caption ids from `tokenize_captions`.
            attention: (B, T) bool caption mask.

        Returns:
            CaptionOutput with loss, logits (B, N+T, V) and labels (B, N+T).
        """
        b, n, _ = visual.shape
        text = self.embed_text(input_ids)
        inputs_embeds = torch.cat([visual.to(text.dtype), text], dim=1)
        attention = attention.bool()
        attention_mask = torch.cat([attention.new_ones((b, n)), attention], dim=1).long()
        ignore = torch.full((b, n), IGNORE_INDEX, dtype=torch.long, device=input_ids.device)
        labels = torch.cat([ignore, input_ids.masked_fill(~attention, IGNORE_INDEX)], dim=1)
        # With labels set, HF shifts them by one: logits[:, N-1] (last visual) predicts labels[:, N].
        out = self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, use_cache=False
        )
        return CaptionOutput(loss=out.loss, logits=out.logits, labels=labels)

    @staticmethod
    def token_accuracy(out: CaptionOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced argmax accuracy on labelled positions, with the same shift as the loss.

        Returns:
            correct, total: 0-dim int64 counts (sum them across batches before dividing).
        """
        pred = out.logits[:, :-1].argmax(dim=-1)
        target = out.labels[:, 1:]
        mask = target != IGNORE_INDEX
        correct = ((pred == target) & mask).sum()
        return correct, mask.sum()

    # ---------------------------------------------------------------------------------------------
    # Inference
    # ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(self, visual: torch.Tensor, max_new_tokens: int = 16) -> torch.Tensor:
        """Greedy continuation of a visual prefix.

        Args:
            visual: (B, N, H) projected visual tokens.

        Returns:
            (B, K) int64 generated ids only (K <= max_new_tokens), padded with pad id after eos.
        """
        b, n, _ = visual.shape
        # Restore each submodule's own mode afterwards: some may be frozen in eval on purpose.
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            embeds = visual.to(self.model.get_input_embeddings().weight.dtype)
            kwargs = {}
            if self.visual_offset is not None:
                # A caption must be text: never emit a visual-code id the tokenizer cannot decode.
                kwargs["suppress_tokens"] = list(
                    range(self.visual_offset, self.visual_offset + self.num_visual_codes)
                )
            out = self.model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones((b, n), dtype=torch.long, device=embeds.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
                **kwargs,
            )
        finally:
            for module, mode in modes:
                module.training = mode
        # transformers v5 returns only the new tokens when called with inputs_embeds alone (checked in
        # tests/test_models.py); should a version also return N prompt placeholders, drop them.
        if out.shape[1] > max_new_tokens:
            out = out[:, n:]
        return out

    def generate_captions(self, visual: torch.Tensor, max_new_tokens: int = 16) -> list[str]:
        """Greedy captions for a batch of visual prefixes (B, N, H) -> B stripped strings."""
        ids = self.generate_ids(visual, max_new_tokens=max_new_tokens)
        texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        return [t.strip() for t in texts]
