"""The one interface every tokenizer family implements (DESIGN.md, STYLE.md 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class TokenizerOutput:
    """What `Tokenizer.encode` returns; the LLM wiring, losses, export and eval only see this.

    Attributes:
        indices: (B, N, C) int64 code ids; C = code streams per position (1 for VQ/binary/flex, 2 for dual).
        embeddings: (B, N, D) what the decoder and the LLM consume (straight-through in training).
        mask: (B, N) bool, True = real token; None when every token is valid (fixed length).
        losses: unweighted auxiliary losses, prefixed by origin, e.g. {"quant/commit": ...}.
    """

    indices: torch.Tensor
    embeddings: torch.Tensor
    mask: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class Tokenizer(nn.Module):
    """Base class: images (B, 3, H, W) in [-1, 1] <-> tokens.

    Subclasses implement `encode`, `decode` and `lookup` and set `num_tokens`, `embed_dim` and
    `codebook_sizes` (one entry per code stream). In eval mode `lookup(out.indices) == out.embeddings`.
    """

    num_tokens: int
    embed_dim: int
    codebook_sizes: tuple[int, ...]
    ordered = False  # True: the tokens are ordered and any prefix decodes (flex); an LLM may read a prefix
    bits_per_token: int | None = None  # K for binary tokens (ids are K-bit strings, `token_bits`), else None
    legacy_keys: dict[str, str] = {}  # state-dict names of earlier versions -> today's (renamed on load)

    def __init__(self):
        super().__init__()
        self._register_load_state_dict_pre_hook(rename_legacy_keys, with_module=True)

    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> TokenizerOutput:
        raise NotImplementedError

    def decode(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_groups(self) -> dict[str, nn.Module]:
        """The parts a training stage trains or freezes by name (`stages.*.train`): encoder, quantizer, decoder."""
        return {"encoder": self.encoder, "quantizer": self.quantizer, "decoder": self.decoder}

    @property
    def stream_names(self) -> tuple[str, ...]:
        """One name per code stream, for per-stream metrics (`codebook_usage/<name>`)."""
        return tuple(f"stream{c}" for c in range(len(self.codebook_sizes)))

    def token_bits(self, indices: torch.Tensor) -> torch.Tensor:
        """Binary tokens only (`bits_per_token` set): ids (B, N, C) -> bits (B, N, K) in {0, 1}."""
        raise NotImplementedError(f"{type(self).__name__} has no binary tokens (bits_per_token is None)")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, TokenizerOutput]:
        """Reconstruct: (B, 3, H, W) -> ((B, 3, H, W), TokenizerOutput)."""
        out = self.encode(images)
        return self.decode(out.embeddings, out.mask), out

    @property
    def codebook_size(self) -> int:
        """Codes per stream for single-stream tokenizers (the common case)."""
        return self.codebook_sizes[0]


def rename_legacy_keys(tokenizer: Tokenizer, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints and exports of earlier versions load under today's names (`Tokenizer.legacy_keys`); a
    load-state-dict pre-hook, also called by partial loads that choose tensors by name first."""
    for old, new in tokenizer.legacy_keys.items():
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
