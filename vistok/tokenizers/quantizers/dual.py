"""Dual-codebook quantizers: one shared index over several codebooks (TokenFlow), and independent codebooks
per feature slice (DualToken, arXiv 2503.14324).

Shape legend: B batch, N = h * w grid positions (row-major, square grid), D = sum of the part widths,
K codes per codebook, S scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vistok.tokenizers.quantizers.base import Quantizer, QuantizerOutput


class SharedIndexQuantizer(Quantizer):
    """Codebooks of equal size K over consecutive feature slices, addressed by one index per position.

    For features split into parts z_p (e.g. semantic 16-d then pixel 8-d), every code i has one entry e_p,i
    per part and `i* = argmin_i sum_p w_p * ||z_p - e_p,i||^2` (TokenFlow: w = (1, w_dis)). The quantized
    vector is the concatenation of the chosen entries, with one straight-through estimator. With one part
    this is a plain (cosine, when `l2norm`) VQ with a learned codebook.

    Multi-scale residual quantization (MSVQ, `scales`), as TokenFlow's code does it: for each scale s the
    residual is area-downsampled to s x s, l2-normalised, quantized with its own straight-through estimator
    and losses (the losses are averaged over the scales), upsampled bicubically to the top grid,
    accumulated, and subtracted (detached) from the residual. The residual itself is not detached, so every
    scale's estimator passes gradient to the encoder; there are no per-scale gains. Scales need not divide
    the top grid (TokenFlow's [1, 2, 4, 6, ..., 16]). Ids come back as one stream per scale on the top grid
    (each top-grid cell holds the id of the nearest coarse cell, so every coarse id appears at least once),
    and `lookup` rebuilds the accumulated map from ids alone.

    Codes are initialised from the first training batch, and codes whose running usage falls below
    `dead_code_threshold` (expected hits per step) are re-seeded from the batch.

    Args:
        dims: width of each part, in feature order.
        codebook_size: K.
        weights: distance weight per part (default all 1).
        l2norm: l2-normalise every part of the features and of the codes (TokenFlow).
        scales: side lengths of the multi-scale grids, ascending, the last the top grid; None = one scale.
        scale_drop: probability, per training step, of dropping one random scale other than the first.
        dead_code_threshold: usage (EMA of hits per step) below which a code is re-seeded; 0 = never.
        usage_decay: EMA decay of the per-code usage.
    """

    def __init__(self, dims: list[int] | tuple[int, ...], codebook_size: int,
                 weights: list[float] | tuple[float, ...] | None = None, l2norm: bool = True,
                 scales: list[int] | tuple[int, ...] | None = None, scale_drop: float = 0.0,
                 dead_code_threshold: float = 0.5, usage_decay: float = 0.95):
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        self.dim = sum(self.dims)
        self.codebook_size = codebook_size
        weights = tuple(float(w) for w in (weights if weights is not None else [1.0] * len(self.dims)))
        if len(weights) != len(self.dims):
            raise ValueError(f"{len(self.dims)} parts but {len(weights)} weights")
        self.weights = weights
        self.l2norm = l2norm
        self.scales = tuple(scales) if scales else None
        if self.scales and list(self.scales) != sorted(self.scales):
            raise ValueError(f"scales must be ascending, got {list(self.scales)}")
        self.scale_drop = scale_drop
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(codebook_size, d)) for d in self.dims])
        streams = len(self.scales) if self.scales else 1
        self.codebook_sizes = (codebook_size,) * streams
        self.stream_names = tuple(f"scale{s}" for s in self.scales) if self.scales else ("shared",)
        self.register_buffer("usage", torch.full((codebook_size,), float(dead_code_threshold) + 1.0))
        self.register_buffer("initialised", torch.tensor(False))

    # ---- geometry -----------------------------------------------------------------------------
    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split(self.dims, dim=-1))

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D) with every part l2-normalised (identity when `l2norm` is off)."""
        if not self.l2norm:
            return z
        return torch.cat([F.normalize(p, dim=-1) for p in self._split(z)], dim=-1)

    def codes(self) -> torch.Tensor:
        """(K, D) the concatenated code vectors (every part l2-normalised when `l2norm`)."""
        return torch.cat([F.normalize(c, dim=-1) if self.l2norm else c for c in self.codebooks], dim=-1)

    def select(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Shared index: (M, D) features, (K, D) codes -> (M,) argmin_i sum_p w_p ||z_p - e_p,i||^2."""
        distance = z.new_zeros(z.shape[0], codes.shape[0])
        for w, zp, ep in zip(self.weights, self._split(z), self._split(codes)):
            distance = distance + w * (zp.square().sum(-1, keepdim=True) - 2 * zp @ ep.t()
                                       + ep.square().sum(-1)[None])
        return distance.argmin(-1)

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.training:  # before the codes enter the graph: they are edited in place
            self._maybe_initialise(self.normalise(z))
            self._restart_dead_codes(self.normalise(z))
        if self.scales is None:
            quantized, indices, losses = self._single_scale(self.normalise(z))  # (B, N, D), (B, N)
        else:
            quantized, indices, losses = self._multiscale(z)  # (B, N, D), (B, N, S)
        if self.training:
            self._count_usage(indices)
        return QuantizerOutput(quantized=quantized, indices=indices, losses=losses)

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised (B, M, D) features -> straight-through codes (B, M, D), ids (B, M), losses."""
        indices = self.select(z.reshape(-1, self.dim).detach(), self.codes()).view(z.shape[:-1])
        quantized = F.embedding(indices, self.codes())
        losses = {"quant": F.mse_loss(quantized, z.detach()), "commit": F.mse_loss(z, quantized.detach())}
        if z.requires_grad:  # straight-through; without a graph the codes themselves (exact lookup invariant)
            quantized = z + (quantized - z).detach()
        return quantized, indices, losses

    def _single_scale(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        return self._quantize(z)

    def quantize_scale(self, residual: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One MSVQ scale: (B, D, side, side) residual -> its straight-through code map on the top grid
        (B, D, side, side), the ids (B, s, s) and the scale's losses."""
        coarse = rearrange(F.interpolate(residual, size=(s, s), mode="area"), "b d h w -> b (h w) d")
        quantized, ids, losses = self._quantize(self.normalise(coarse))
        vectors = rearrange(quantized, "b (h w) d -> b d h w", h=s)
        return _upsample_map(vectors, residual.shape[-1]), ids.view(-1, s, s), losses

    def _multiscale(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        side = _side(z.shape[1])
        if self.scales[-1] != side:
            raise ValueError(f"the last scale {self.scales[-1]} must be the top grid {side} x {side}")
        residual = rearrange(z, "b (h w) d -> b d h w", h=side)  # not detached: each scale's estimator reaches z
        accumulated, streams, scale_losses = 0, [], []
        dropped = self._dropped_scale()
        for k, s in enumerate(self.scales):
            up, ids, losses = self.quantize_scale(residual, s)
            streams.append(_upsample_ids(ids, side))
            if k == dropped:
                continue
            accumulated = accumulated + up
            scale_losses.append(losses)
            residual = residual - up.detach()
        losses = {name: torch.stack([l[name] for l in scale_losses]).mean() for name in scale_losses[0]}
        return rearrange(accumulated, "b d h w -> b (h w) d"), torch.stack(streams, -1), losses

    def _code_map(self, ids: torch.Tensor, side: int) -> torch.Tensor:
        """(B, s, s) ids at one scale -> (B, D, side, side) code map upsampled to the top grid."""
        return _upsample_map(rearrange(F.embedding(ids, self.codes()), "b h w d -> b d h w"), side)

    def _dropped_scale(self) -> int | None:
        if not self.training or self.scale_drop <= 0 or len(self.scales) < 2:
            return None
        if torch.rand(()) >= self.scale_drop:
            return None
        return int(torch.randint(1, len(self.scales), ()))

    # ---- codebook maintenance (training mode only) ---------------------------------------------
    @torch.no_grad()
    def _maybe_initialise(self, z: torch.Tensor) -> None:
        if bool(self.initialised):
            return
        flat = z.reshape(-1, self.dim)
        picks = flat[torch.randint(0, flat.shape[0], (self.codebook_size,), device=z.device)]
        for codebook, part in zip(self.codebooks, self._split(picks)):
            codebook.copy_(part + 0.01 * torch.randn_like(part))
        self.initialised.fill_(True)

    @torch.no_grad()
    def _count_usage(self, indices: torch.Tensor) -> None:
        hits = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
        self.usage.mul_(self.usage_decay).add_(hits, alpha=1 - self.usage_decay)

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor) -> None:
        if self.dead_code_threshold <= 0:
            return
        dead = (self.usage < self.dead_code_threshold).nonzero().flatten()
        if len(dead) == 0:
            return
        flat = z.reshape(-1, self.dim)
        picks = flat[torch.randint(0, flat.shape[0], (len(dead),), device=z.device)]
        for codebook, part in zip(self.codebooks, self._split(picks)):
            codebook[dead] = part
        self.usage[dead] = self.dead_code_threshold + 1.0

    # ---- ids -> vectors -----------------------------------------------------------------------
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N) ids, or (B, N, S) per-scale ids on the top grid -> (B, N, D)."""
        if self.scales is None:
            return F.embedding(indices[..., 0] if indices.dim() == 3 else indices, self.codes())
        side = _side(indices.shape[1])
        total = 0
        for k, s in enumerate(self.scales):
            cells = _first_top_cells(s, side, indices.device)  # one top-grid cell per coarse cell
            grid = rearrange(indices[..., k], "b (h w) -> b h w", h=side)[:, cells][:, :, cells]
            total = total + self._code_map(grid, side)
        return rearrange(total, "b d h w -> b (h w) d")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """State saved when MSVQ learned per-scale gains: a single-scale gain of exactly 1 is dropped; learned
        gains cannot be honoured by this quantizer and are refused by name."""
        gains = state_dict.get(prefix + "log_gains")
        if gains is not None:
            if gains.numel() > 1 or float(gains.abs().max()) > 0:
                raise RuntimeError(f"{prefix}log_gains: this state was trained with learned scale gains, which "
                                   "the multi-scale quantizer no longer has (TokenFlow's code has none); "
                                   "retrain it, or load it with the vistok version that saved it")
            state_dict.pop(prefix + "log_gains")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SeparateCodebookQuantizer(Quantizer):
    """DualToken: independent quantizers over the semantic slice and the pixel slice, two code streams.

    Args:
        semantic: quantizer over the first `semantic.dim` features.
        pixel: quantizer over the remaining `pixel.dim` features.
    """

    def __init__(self, semantic: Quantizer, pixel: Quantizer):
        super().__init__()
        self.semantic, self.pixel = semantic, pixel
        self.dims = (semantic.dim, pixel.dim)
        self.dim = sum(self.dims)
        self.codebook_size = max(semantic.codebook_size, pixel.codebook_size)
        self.codebook_sizes = (semantic.codebook_size, pixel.codebook_size)
        self.stream_names = ("semantic", "pixel")

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z_sem, z_pix = z.split(self.dims, dim=-1)
        sem, pix = self.semantic(z_sem), self.pixel(z_pix)
        losses = {**{f"semantic/{k}": v for k, v in sem.losses.items()},
                  **{f"pixel/{k}": v for k, v in pix.losses.items()}}
        return QuantizerOutput(quantized=torch.cat([sem.quantized, pix.quantized], -1),
                               indices=torch.stack([_one_stream(sem.indices), _one_stream(pix.indices)], -1),
                               losses=losses)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) [semantic id, pixel id] -> (B, N, D) fused pair."""
        return torch.cat([self.semantic.lookup(indices[..., 0]), self.pixel.lookup(indices[..., 1])], -1)


def _one_stream(indices: torch.Tensor) -> torch.Tensor:
    if indices.dim() == 3:
        if indices.shape[-1] != 1:
            raise ValueError("separate codebooks take single-stream quantizers (one id per position)")
        return indices[..., 0]
    return indices


def _side(n: int) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"multi-scale quantization needs a square grid, got {n} positions")
    return side


def _upsample_map(vectors: torch.Tensor, side: int) -> torch.Tensor:
    """(B, D, s, s) -> (B, D, side, side), bicubic as in TokenFlow's code (the identity at s = side)."""
    if vectors.shape[-1] == side:
        return vectors
    return F.interpolate(vectors, size=(side, side), mode="bicubic", align_corners=False)


def _nearest_coarse_cells(s: int, side: int, device: torch.device | None = None) -> torch.Tensor:
    """(side,) the coarse row (or column) under each top-grid row: floor(i * s / side)."""
    return torch.arange(side, device=device) * s // side


def _first_top_cells(s: int, side: int, device: torch.device | None = None) -> torch.Tensor:
    """(s,) for each coarse row, the first top-grid row whose nearest coarse row it is: ceil(j * side / s)."""
    return (torch.arange(s, device=device) * side + s - 1) // s


def _upsample_ids(ids: torch.Tensor, side: int) -> torch.Tensor:
    """(B, s, s) ids -> (B, side * side): each top-grid cell holds the id of its nearest coarse cell. Any
    s <= side works; `_first_top_cells` finds every coarse id again."""
    s = ids.shape[-1]
    if s > side:
        raise ValueError(f"scale {s} is larger than the top grid {side}")
    cells = _nearest_coarse_cells(s, side, ids.device)
    return rearrange(ids[:, cells][:, :, cells], "b h w -> b (h w)")
