"""The `binary1d` family: N 1-D latent tokens, each a K-bit binary vector (Instella-T2I 1D-BIT).

encoder (image -> N latent tokens) -> quantizer (binary bits; or LFQ / BSQ / any `Quantizer`) -> decoder.
With K bits per token, N tokens hold N * K bits: Instella's 128 x 64 = 8,192 bits for up to 1024 px,
32x fewer tokens than an f16 2-D grid at 1024 px.
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.tokenizers.base import Tokenizer, TokenizerOutput
from vistok.tokenizers.quantizers.base import Quantizer


def check_parts(encoder: nn.Module, quantizer: Quantizer, decoder: nn.Module, num_tokens: int,
                embed_dim: int | None) -> None:
    """A 1-D tokenizer's parts agree on the token count N and the embedding size D (clear errors)."""
    if embed_dim is not None and embed_dim != quantizer.dim:
        raise ValueError(f"embed_dim {embed_dim} does not match the quantizer's dim {quantizer.dim}")
    for part in (encoder, decoder):
        if getattr(part, "num_tokens", num_tokens) != num_tokens:
            raise ValueError(f"num_tokens {num_tokens} does not match {type(part).__name__}'s {part.num_tokens}")


class Binary1DTokenizer(Tokenizer):
    """Images <-> N tokens of K bits.

    Args:
        encoder: (B, 3, H, W) -> (B, N, D), e.g. `modules.vit.LatentTokenEncoder`.
        quantizer: a `Quantizer` over D-dim tokens; `quantizers.binary.BinaryQuantizer` for the paper's bits.
        decoder: (B, N, D), mask -> (B, 3, H, W), e.g. `modules.vit.LatentTokenDecoder`.
        num_tokens: N, checked against the encoder and decoder (configs interpolate it into both).
        embed_dim: D, checked against the quantizer.
    """

    def __init__(self, encoder: nn.Module, quantizer: Quantizer, decoder: nn.Module, num_tokens: int,
                 embed_dim: int | None = None):
        super().__init__()
        check_parts(encoder, quantizer, decoder, num_tokens, embed_dim)
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.num_tokens = num_tokens
        self.embed_dim = quantizer.dim
        self.streams = getattr(quantizer, "streams", 1)  # ids per token (C)
        self.codebook_sizes = (quantizer.codebook_size,) * self.streams

    @property
    def bits_per_token(self) -> int | None:
        """K for bit quantizers (binary, LFQ/BSQ); None for quantizers whose ids are not bit strings."""
        return getattr(self.quantizer, "bits", None)

    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> TokenizerOutput:
        if num_tokens not in (None, self.num_tokens):
            raise ValueError(f"a binary1d tokenizer always emits {self.num_tokens} tokens, got num_tokens={num_tokens}")
        q = self.quantizer(self.encoder(images))  # on (B, N, D)
        indices = q.indices if q.indices.dim() == 3 else q.indices.unsqueeze(-1)  # (B, N, C)
        losses = {f"quant/{name}": value for name, value in q.losses.items()}
        return TokenizerOutput(indices=indices, embeddings=q.quantized, mask=None, losses=losses)

    def decode(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(embeddings, mask)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N, C) ids -> (B, N, D) embeddings (C = 1: (B, N) also accepted)."""
        if indices.dim() == 3 and indices.shape[-1] == 1:
            indices = indices[..., 0]
        return self.quantizer.lookup(indices)

    def token_bits(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N, C) ids -> (B, N, K) bits in {0, 1}; for bit quantizers only (see `bits_per_token`)."""
        if self.bits_per_token is None:
            raise TypeError(f"{type(self.quantizer).__name__} ids are not bit strings")
        return self.quantizer.unpack(indices[..., 0] if indices.shape[-1] == 1 else indices)
