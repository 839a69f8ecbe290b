"""The `flex` family: ordered 1-D tokens whose first k already decode to an image (FlexTok, One-D-Piece).

Same ViT latent-token encoder / decoder as `binary1d`; what differs is how training teaches the order, a
length dropout injected into the tokenizer (configs/tokenizer/dropout/):
- `NestedDropout` (FlexTok): per sample, keep the first k tokens and replace the rest with one learned mask
  token, which the dropout owns; the decoder always reads N positions.
- `TailDropout` (One-D-Piece): one length L ~ U{1..N} per batch; the decoder sees only the first L tokens
  (the tail is masked out of attention, which is the truncated sequence with sliced positions).
- None: the fixed-length control.
Prefixes are expressed by `TokenizerOutput.mask` (B, N), True = kept: never by ragged lists.
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.tokenizers.base import Tokenizer, TokenizerOutput
from vistok.tokenizers.binary1d import check_parts
from vistok.tokenizers.quantizers.base import Quantizer

SAMPLINGS = ("uniform", "pow2", "uniform_pow2")


def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, ... up to n, with n itself last even when it is not a power of two."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def round_up_to_power_of_two(k: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= k, elementwise, for integer k >= 1."""
    return 2 ** torch.ceil(torch.log2(k.double())).long()


def sample_keep(batch: int, n: int, sampling: str, generator: torch.Generator | None = None,
                device: torch.device | None = None, full_prob: float = 0.0) -> torch.Tensor:
    """Tokens kept per sample, (B,) int64 in [1, n].

    "uniform": k ~ U{1..n}; "pow2": k uniform over {1, 2, 4, ..., n}; "uniform_pow2": k ~ U{1..n} rounded up
    to the next power of two (capped at n), as ml-flextok's `MaskedNestedDropout` does: about half the
    samples keep all tokens, and the mass halves with each smaller power of two.
    full_prob: the share of samples that keep all n tokens instead of drawing k (0 = the modes alone).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got '{sampling}'")
    if not 0.0 <= full_prob <= 1.0:
        raise ValueError(f"full_prob must be in [0, 1], got {full_prob}")
    # Both draws are made in every mode, so that a mode's random stream (and its runs) stay as they were.
    uniform = torch.randint(1, n + 1, (batch,), generator=generator)
    pows = torch.tensor(powers_of_two(n))
    pow2 = pows[torch.randint(len(pows), (batch,), generator=generator)]
    if sampling == "uniform":
        keep = uniform
    elif sampling == "pow2":
        keep = pow2
    else:
        keep = round_up_to_power_of_two(uniform).clamp_max(n)
    if full_prob > 0:
        keep = torch.where(torch.rand(batch, generator=generator) < full_prob, n, keep)
    return keep.to(device)


def prefix_mask(keep: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) kept counts -> (B, N) bool, True on the first keep[b] positions."""
    return torch.arange(n, device=keep.device)[None, :] < keep[:, None]


class LengthDropout(nn.Module):
    """How training shortens the token sequence. `keep` draws the kept counts of one training forward;
    `mask_token` (1, 1, D), if any, fills the dropped positions (otherwise they are masked out of attention)."""

    def __init__(self):
        super().__init__()
        self.register_parameter("mask_token", None)  # (1, 1, D) where the dropout fills dropped positions

    def keep(self, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        """(B,) kept counts in [1, num_tokens]."""
        raise NotImplementedError


class NestedDropout(LengthDropout):
    """FlexTok: k drawn per sample (`sample_keep`), the rest replaced by one learned mask token.

    Args:
        dim: D, the width of the quantized tokens the decoder reads (the mask token lives in that space).
        sampling: how k is drawn ("uniform", "pow2", "uniform_pow2").
        full_prob: the share of samples trained at full length, k = N.
    """

    def __init__(self, dim: int, sampling: str = "pow2", full_prob: float = 0.0):
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got '{sampling}'")
        if not 0.0 <= full_prob <= 1.0:
            raise ValueError(f"full_prob must be in [0, 1], got {full_prob}")
        self.sampling, self.full_prob = sampling, full_prob
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))

    def keep(self, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        return sample_keep(batch, num_tokens, self.sampling, device=device, full_prob=self.full_prob)


class TailDropout(LengthDropout):
    """One-D-Piece: one length L ~ U{1..N} for the whole batch; the tail is masked out of attention.

    Args:
        full_prob: the share of batches trained at full length, L = N (0 = One-D-Piece's own recipe; the
            full length otherwise gets 1/N of the steps, as every other length).
    """

    def __init__(self, full_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= full_prob <= 1.0:
            raise ValueError(f"full_prob must be in [0, 1], got {full_prob}")
        self.full_prob = full_prob

    def keep(self, batch: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        length = int(torch.randint(1, num_tokens + 1, ()))
        if self.full_prob > 0 and float(torch.rand(())) < self.full_prob:  # no extra draw at 0: runs unchanged
            length = num_tokens
        return torch.full((batch,), length, device=device)


def _legacy_dropout(name: str, dim: int, sampling: str, full_prob: float) -> LengthDropout | None:
    """The dropout that exports of earlier versions name by string, with its settings stored beside it."""
    if name not in ("nested", "tail", "none"):
        raise ValueError(f"dropout must be a LengthDropout, None or (older exports) 'nested', 'tail' or 'none', "
                         f"got '{name}'")
    if name == "nested":
        return NestedDropout(dim, sampling, full_prob)
    return TailDropout() if name == "tail" else None


class FlexTokenizer(Tokenizer):
    """Images <-> N ordered tokens; decode from any prefix.

    Args:
        encoder: (B, 3, H, W) -> (B, N, D), e.g. `modules.vit.LatentTokenEncoder`.
        quantizer: a `Quantizer` over D-dim tokens (FSQ in FlexTok, VQ in One-D-Piece).
        decoder: (B, N, D), key mask -> (B, 3, H, W), e.g. `modules.vit.LatentTokenDecoder`.
        num_tokens: N.
        embed_dim: D, checked against the quantizer.
        dropout: the length dropout of training (`NestedDropout`, `TailDropout`) or None (fixed length).
            Trained and frozen with the decoder (`training_groups`).
        sampling, full_prob: read only with a dropout named by string, as exports of earlier versions store it.
    """

    ordered = True  # the LLM may read a prefix of the tokens as a smaller token budget (TokenFLEX)
    legacy_keys = {"decoder.dropout_token": "length_dropout.mask_token"}  # earlier versions kept it on the decoder

    def __init__(self, encoder: nn.Module, quantizer: Quantizer, decoder: nn.Module, num_tokens: int,
                 embed_dim: int | None = None, dropout: LengthDropout | str | None = None,
                 sampling: str = "pow2", full_prob: float = 0.0):
        super().__init__()
        check_parts(encoder, quantizer, decoder, num_tokens, embed_dim)
        if isinstance(dropout, str):
            dropout = _legacy_dropout(dropout, quantizer.dim, sampling, full_prob)
        token = dropout.mask_token if dropout is not None else None
        if token is not None and token.shape[-1] != quantizer.dim:
            raise ValueError(f"the dropout's mask token has width {token.shape[-1]} but the tokens have "
                             f"{quantizer.dim}: set its dim to the tokenizer's embed_dim")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.length_dropout = dropout
        self.num_tokens, self.embed_dim = num_tokens, quantizer.dim
        self.codebook_sizes = (quantizer.codebook_size,)
        patch = getattr(getattr(encoder, "patch_embed", None), "kernel_size", (None,))[0]
        self.resolution = encoder.grid * patch if patch else None  # image side H = W (scripts.evaluate reads it)

    @property
    def mask_token(self) -> torch.Tensor | None:
        return self.length_dropout.mask_token if self.length_dropout is not None else None

    def training_groups(self) -> dict[str, nn.Module]:
        """The dropout (its mask token) is trained and frozen with the decoder that reads it."""
        groups = super().training_groups()
        if self.length_dropout is not None:
            groups["decoder"] = nn.ModuleList([self.decoder, self.length_dropout])
        return groups

    def _training_keep(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """(B,) kept counts drawn for a training forward; None = keep everything."""
        if self.length_dropout is None:
            return None
        return self.length_dropout.keep(batch, self.num_tokens, device)

    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> TokenizerOutput:
        """All N tokens are computed; `mask` marks the kept prefix.

        num_tokens=k keeps the first k (mask True on them); None keeps all in eval mode and, in training
        mode, draws the dropout's k (nested: per sample, tail: per batch).
        """
        if num_tokens is not None and not 1 <= num_tokens <= self.num_tokens:
            raise ValueError(f"num_tokens must be in [1, {self.num_tokens}], got {num_tokens}")
        q = self.quantizer(self.encoder(images))  # (B, N, D)
        b = images.shape[0]
        if num_tokens is not None:
            keep = torch.full((b,), num_tokens, device=images.device)
        else:
            keep = self._training_keep(b, images.device) if self.training else None
        mask = None if keep is None or bool((keep == self.num_tokens).all()) else prefix_mask(keep, self.num_tokens)
        indices = q.indices if q.indices.dim() == 3 else q.indices.unsqueeze(-1)  # (B, N, 1)
        losses = {f"quant/{name}": value for name, value in q.losses.items()}
        if hasattr(self.decoder, "loss") and self.decoder.training and torch.is_grad_enabled():
            # a flow decoder being trained: its flow-matching term (weighted on the training side)
            losses["flow/velocity"] = self.decoder.loss(*self._decoder_inputs(q.quantized, mask), images)
        return TokenizerOutput(indices=indices, embeddings=q.quantized, mask=mask, losses=losses)

    def decode(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) + prefix mask (B, N) -> images. Dropped tokens never reach the pixels.

        Nested: dropped positions hold the mask token (the decoder reads N positions, as trained).
        Tail / none: dropped positions are masked out of attention (the decoder sees a shorter sequence).
        """
        return self.decoder(*self._decoder_inputs(embeddings, mask))

    def _decoder_inputs(self, embeddings: torch.Tensor, mask: torch.Tensor | None):
        """(tokens (B, N, D), key mask (B, N) or None) as the decoder reads them."""
        if mask is None:
            return embeddings, None
        if self.mask_token is not None:
            return torch.where(mask[..., None], embeddings, self.mask_token.to(embeddings.dtype)), None
        return embeddings, mask

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N, 1) or (B, N) ids -> (B, N, D) embeddings."""
        if indices.dim() == 3:
            indices = indices[..., 0]
        return self.quantizer.lookup(indices)

