"""Small VQGAN-style convolutional encoder and decoder (GroupNorm + SiLU residual blocks)."""

from __future__ import annotations

import torch
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


class ConvEncoder(nn.Module):
    """(B, in_ch, H, W) -> (B, out_dim, H / 2**len(ch_mult[1:]), ...): one downsample per extra level.

    Args:
        in_channels: image channels.
        out_dim: channels of the latent grid (the quantizer's D).
        base_channels: width of the first level.
        ch_mult: width multiplier per level; len(ch_mult) - 1 stride-2 downsamples.
        blocks_per_level: residual blocks per level.
    """

    def __init__(self, in_channels: int = 3, out_dim: int = 16, base_channels: int = 64,
                 ch_mult: tuple[int, ...] = (1, 2, 2), blocks_per_level: int = 1):
        super().__init__()
        widths = [base_channels * m for m in ch_mult]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            prev = widths[max(level - 1, 0)]
            layers += [ResBlock(prev if i == 0 else width, width) for i in range(blocks_per_level)]
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        layers += [ResBlock(widths[-1], widths[-1]), _norm(widths[-1]), nn.SiLU(),
                   nn.Conv2d(widths[-1], out_dim, 1)]
        self.net = nn.Sequential(*layers)
        self.downsample = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of `ConvEncoder`: (B, in_dim, h, w) -> (B, out_channels, h * 2**(levels-1), ...)."""

    def __init__(self, in_dim: int = 16, out_channels: int = 3, base_channels: int = 64,
                 ch_mult: tuple[int, ...] = (1, 2, 2), blocks_per_level: int = 1):
        super().__init__()
        widths = [base_channels * m for m in reversed(ch_mult)]
        layers: list[nn.Module] = [nn.Conv2d(in_dim, widths[0], 3, padding=1), ResBlock(widths[0], widths[0])]
        for level, width in enumerate(widths):
            prev = widths[max(level - 1, 0)]
            layers += [ResBlock(prev if i == 0 else width, width) for i in range(blocks_per_level)]
            if level < len(widths) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
