"""The LLM's visual output head: hidden states -> the tokenizer's discrete codes (text-to-image direction).

Two kinds, picked from the tokenizer family:
- `CodeHead`: one softmax over each code stream's codebook (vq, dual, flex; dual with separate codebooks
  has C = 2 streams, each with its own logits).
- `BitHead`: K independent Bernoulli bits per token (binary1d, Instella-T2I): K logits, trained with BCE.

Model code only (single device): the losses live in vistok/losses/generation.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.tokenizers.quantizers.binary import pack_bits


class CodeHead(nn.Module):
    """Hidden (B, L, H) -> logits (B, L, C, V) over V = max codebook size; smaller streams are padded
    with -inf so they never sample an id outside their codebook.

    Args:
        hidden_size: H, the LLM width.
        codebook_sizes: one codebook size per code stream (C of them).
    """

    kind = "codes"

    def __init__(self, hidden_size: int, codebook_sizes: tuple[int, ...]):
        super().__init__()
        if not codebook_sizes or min(codebook_sizes) < 2:
            raise ValueError(f"a code head needs codebook sizes >= 2, got {codebook_sizes}")
        self.codebook_sizes = tuple(int(k) for k in codebook_sizes)
        self.vocab = max(self.codebook_sizes)
        self.proj = nn.Linear(hidden_size, len(self.codebook_sizes) * self.vocab)
        # (C, V) True where an id does not exist in that stream's codebook
        invalid = torch.arange(self.vocab)[None, :] >= torch.tensor(self.codebook_sizes)[:, None]
        self.register_buffer("invalid", invalid, persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.to(self.proj.weight.dtype)  # a 16-bit LLM's states into the float32 head
        logits = self.proj(hidden).unflatten(-1, (len(self.codebook_sizes), self.vocab))  # (B, L, C, V)
        return logits.masked_fill(self.invalid, float("-inf"))

    def targets(self, tokenizer: nn.Module, indices: torch.Tensor) -> torch.Tensor:
        """The training targets of tokenizer ids (B, N, C): the ids themselves."""
        return indices.long()

    def to_indices(self, sampled: torch.Tensor) -> torch.Tensor:
        """Sampled ids (..., C) -> tokenizer ids (..., C)."""
        return sampled.long()


class BitHead(nn.Module):
    """Hidden (B, L, H) -> logits (B, L, K), one per bit of a K-bit binary token (Instella-T2I).

    Args:
        hidden_size: H.
        bits: K bits per token.
        index_bits: bits per packed tokenizer id (the quantizer's `index_bits`), to turn bits back into ids.
    """

    kind = "bits"

    def __init__(self, hidden_size: int, bits: int, index_bits: int):
        super().__init__()
        if bits < 1 or index_bits < 1:
            raise ValueError(f"a bit head needs bits >= 1 and index_bits >= 1, got {bits}, {index_bits}")
        self.bits, self.index_bits = int(bits), int(index_bits)
        self.proj = nn.Linear(hidden_size, self.bits)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype))  # (B, L, K); a 16-bit LLM's states in float32

    def targets(self, tokenizer: nn.Module, indices: torch.Tensor) -> torch.Tensor:
        """The training targets of tokenizer ids (B, N, C): their K bits (B, N, K) as floats in {0, 1}."""
        return tokenizer.token_bits(indices).float()

    def to_indices(self, bits: torch.Tensor) -> torch.Tensor:
        """Sampled bits (..., K) in {0, 1} -> tokenizer ids (..., C), most significant bit first."""
        return pack_bits(bits, self.index_bits)



def build_visual_head(tokenizer: nn.Module, hidden_size: int) -> CodeHead | BitHead:
    """The head that fits a tokenizer: bits for binary tokens (Instella's BCE), else a softmax per stream."""
    bits = tokenizer.bits_per_token
    if bits is not None:
        return BitHead(hidden_size, bits, getattr(tokenizer.quantizer, "index_bits", bits))
    return CodeHead(hidden_size, tuple(tokenizer.codebook_sizes))
