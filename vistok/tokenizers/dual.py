"""The `dual` family: semantic and pixel codes per grid position (TokenFlow shared index, DualToken separate
codebooks), one fused embedding per position for the LLM. TokenFlow: arXiv 2412.03069; DualToken: arXiv
2503.14324.

    encoder(images)     -> (B, Ds + Dp, h, w)   semantic channels first
    quantizer           -> fused pair (B, N, Ds + Dp), ids (B, N, C)
    decoder(codes)      -> images               reads the fused pair or the pixel half only
    decoder.semantics   -> (B, Dt, h, w)        the semantic half predicts the teacher's features
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from vistok.tokenizers.base import Tokenizer, TokenizerOutput
from vistok.tokenizers.quantizers.base import Quantizer


class DualTokenizer(Tokenizer):
    """A 2-D grid tokenizer whose code vector is the pair [semantic; pixel].

    C (code streams) comes from the quantizer: 1 for one shared index (TokenFlow), 2 for separate semantic
    and pixel codebooks (DualToken), S for S-scale residual quantization with a shared index. A plain
    single-codebook quantizer with `semantic_dim = embed_dim` gives the "one codebook + semantic loss" arm.

    Args:
        encoder: (B, 3, H, W) -> (B, D, h, w), semantic channels first.
        quantizer: a `Quantizer` over D-dim vectors (`codebook_sizes` per stream when it has several).
        decoder: a `DualDecoder` (pixel decoder + semantic head).
        resolution: input size H = W.
        semantic_dim: Ds, the leading channels the semantic head reads.
        pixel_dim: Dp, the channels after them (0 for a single codebook).
        embed_dim: D = Ds + Dp, checked against the quantizer (configs interpolate it into every part).
    """

    def __init__(self, encoder: nn.Module, quantizer: Quantizer, decoder: nn.Module, resolution: int = 32,
                 semantic_dim: int = 16, pixel_dim: int = 8, embed_dim: int | None = None):
        super().__init__()
        if semantic_dim <= 0 or pixel_dim < 0 or semantic_dim + pixel_dim != quantizer.dim:
            raise ValueError(f"semantic_dim {semantic_dim} + pixel_dim {pixel_dim} must equal the quantizer's "
                             f"dim {quantizer.dim} (semantic_dim > 0)")
        if embed_dim is not None and embed_dim != quantizer.dim:
            raise ValueError(f"embed_dim {embed_dim} does not match the quantizer's dim {quantizer.dim}")
        downsample = getattr(encoder, "downsample", 1)
        if resolution % downsample:
            raise ValueError(f"resolution {resolution} is not divisible by the encoder downsample {downsample}")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.resolution, self.semantic_dim, self.pixel_dim = resolution, semantic_dim, pixel_dim
        self.grid = resolution // downsample
        self.num_tokens = self.grid * self.grid
        self.embed_dim = quantizer.dim
        self.codebook_sizes = tuple(getattr(quantizer, "codebook_sizes", (quantizer.codebook_size,)))

    @property
    def stream_names(self) -> tuple[str, ...]:
        """The quantizer's names for its codebooks (semantic, pixel), for per-codebook metrics."""
        return tuple(getattr(self.quantizer, "stream_names", None) or super().stream_names)

    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> TokenizerOutput:
        if num_tokens not in (None, self.num_tokens):
            raise ValueError(f"a dual tokenizer always emits {self.num_tokens} tokens, got num_tokens={num_tokens}")
        z = rearrange(self.encoder(images), "b d h w -> b (h w) d")  # (B, N, D)
        q = self.quantizer(z)
        indices = q.indices if q.indices.dim() == 3 else q.indices.unsqueeze(-1)  # (B, N, C)
        losses = {f"quant/{name}": value for name, value in q.losses.items()}
        return TokenizerOutput(indices=indices, embeddings=q.quantized, mask=None, losses=losses)

    def decode(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self._grid(embeddings))

    def predict_semantics(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, N, D) fused codes -> (B, N, Dt) predicted teacher features, from the semantic half."""
        semantic = self._grid(embeddings[..., : self.semantic_dim])
        return rearrange(self.decoder.semantics(semantic), "b d h w -> b (h w) d")

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N, C) (or (B, N) when C = 1) ids -> (B, N, D) fused embeddings."""
        if indices.dim() == 3 and indices.shape[-1] == 1:
            indices = indices[..., 0]
        return self.quantizer.lookup(indices)

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(tokens, "b (h w) d -> b d h w", h=self.grid)
