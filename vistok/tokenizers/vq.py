"""The `vq` family: a 2-D grid tokenizer, encoder -> quantizer -> decoder (VQGAN / IBQ style)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from vistok.tokenizers.base import Tokenizer, TokenizerOutput
from vistok.tokenizers.quantizers.base import Quantizer


class VQTokenizer(Tokenizer):
    """Encodes an image to an h x w grid of codes, flattened row-major to N = h * w tokens.

    Args:
        encoder: (B, 3, H, W) -> (B, D, h, w).
        quantizer: a `Quantizer` over D-dim vectors.
        decoder: (B, D, h, w) -> (B, 3, H, W).
        resolution: input image size H = W (fixes N).
        embed_dim: D, checked against the quantizer (configs interpolate it into every part).
    """

    def __init__(self, encoder: nn.Module, quantizer: Quantizer, decoder: nn.Module, resolution: int = 32,
                 embed_dim: int | None = None):
        super().__init__()
        downsample = getattr(encoder, "downsample", 1)
        if embed_dim is not None and embed_dim != quantizer.dim:
            raise ValueError(f"embed_dim {embed_dim} does not match the quantizer's dim {quantizer.dim}")
        if resolution % downsample:
            raise ValueError(f"resolution {resolution} is not divisible by the encoder downsample {downsample}")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.resolution = resolution
        self.grid = resolution // downsample
        self.num_tokens = self.grid * self.grid
        self.embed_dim = quantizer.dim
        self.codebook_sizes = (quantizer.codebook_size,)

    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> TokenizerOutput:
        if num_tokens not in (None, self.num_tokens):
            raise ValueError(f"a vq tokenizer always emits {self.num_tokens} tokens, got num_tokens={num_tokens}")
        z = rearrange(self.encoder(images), "b d h w -> b (h w) d")  # (B, N, D)
        q = self.quantizer(z)
        losses = {f"quant/{name}": value for name, value in q.losses.items()}
        return TokenizerOutput(indices=q.indices.unsqueeze(-1), embeddings=q.quantized, mask=None, losses=losses)

    def decode(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        grid = rearrange(embeddings, "b (h w) d -> b d h w", h=self.grid)
        return self.decoder(grid)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N, 1) or (B, N) code ids -> (B, N, D) embeddings."""
        if indices.dim() == 3:
            indices = indices[..., 0]
        return self.quantizer.lookup(indices)
