"""VQGAN-style convolutional encoder and decoder (GroupNorm + SiLU residual blocks, optional self-attention).

The small defaults serve the mini configs; `attn_levels` and `mid_attention` give the VQGAN layout of IBQ's
released configs (attention after every residual block of the lowest-resolution level and in the middle
block: residual, attention, residual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, channels // 4) or 1, num_channels=channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
            _norm(out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class SpatialSelfAttention(nn.Module):
    """One-head self-attention over the positions of a feature map, with a residual: (B, C, H, W) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each (B, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)                                  # (B, HW, C)
        return x + self.proj(y.transpose(1, 2).reshape(b, c, h, w))


def _level(in_ch: int, width: int, blocks: int, attention: bool) -> list[nn.Module]:
    """`blocks` residual blocks (the first maps in_ch -> width), each followed by attention if asked."""
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers.append(ResBlock(in_ch if i == 0 else width, width))
        if attention:
            layers.append(SpatialSelfAttention(width))
    return layers


def _middle(width: int, attention: bool) -> list[nn.Module]:
    """The block between the levels and the latent: one residual block, or VQGAN's residual, attention,
    residual."""
    if not attention:
        return [ResBlock(width, width)]
    return [ResBlock(width, width), SpatialSelfAttention(width), ResBlock(width, width)]


class ConvEncoder(nn.Module):
    """(B, in_ch, H, W) -> (B, out_dim, H / 2**len(ch_mult[1:]), ...): one downsample per extra level.

    Args:
        in_channels: image channels.
        out_dim: channels of the latent grid (the quantizer's D).
        base_channels: width of the first level.
        ch_mult: width multiplier per level; len(ch_mult) - 1 stride-2 downsamples.
        blocks_per_level: residual blocks per level.
        attn_levels: levels (0 = full resolution) whose residual blocks are each followed by self-attention.
        mid_attention: the middle block is residual, attention, residual (VQGAN) instead of one residual.
    """

    def __init__(self, in_channels: int = 3, out_dim: int = 16, base_channels: int = 64,
                 ch_mult: tuple[int, ...] = (1, 2, 2), blocks_per_level: int = 1,
                 attn_levels: tuple[int, ...] = (), mid_attention: bool = False):
        super().__init__()
        widths = [base_channels * m for m in ch_mult]
        _check_levels(attn_levels, len(widths))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            prev = widths[max(level - 1, 0)]
            layers += _level(prev, width, blocks_per_level, level in attn_levels)
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        layers += [*_middle(widths[-1], mid_attention), _norm(widths[-1]), nn.SiLU(),
                   nn.Conv2d(widths[-1], out_dim, 1)]
        self.net = nn.Sequential(*layers)
        self.downsample = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of `ConvEncoder`: (B, in_dim, h, w) -> (B, out_channels, h * 2**(levels-1), ...).

    `attn_levels` counts levels as the encoder does (0 = full resolution), so the same list places attention
    at the same resolutions on both sides."""

    def __init__(self, in_dim: int = 16, out_channels: int = 3, base_channels: int = 64,
                 ch_mult: tuple[int, ...] = (1, 2, 2), blocks_per_level: int = 1,
                 attn_levels: tuple[int, ...] = (), mid_attention: bool = False):
        super().__init__()
        widths = [base_channels * m for m in reversed(ch_mult)]
        _check_levels(attn_levels, len(widths))
        layers: list[nn.Module] = [nn.Conv2d(in_dim, widths[0], 3, padding=1), *_middle(widths[0], mid_attention)]
        for level, width in enumerate(widths):
            prev = widths[max(level - 1, 0)]
            layers += _level(prev, width, blocks_per_level, len(widths) - 1 - level in attn_levels)
            if level < len(widths) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _check_levels(attn_levels: tuple[int, ...], num_levels: int) -> None:
    bad = [level for level in attn_levels if not 0 <= level < num_levels]
    if bad:
        raise ValueError(f"attn_levels {list(attn_levels)}: levels run 0..{num_levels - 1} (one per ch_mult entry)")
