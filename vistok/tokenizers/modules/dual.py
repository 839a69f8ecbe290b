"""Encoders and decoders of the `dual` family: a semantic and a pixel feature per grid position.

Every encoder here returns one (B, Ds + Dp, h, w) map, semantic channels first, so the quantizer and the
tokenizer only see one tensor; the decoder container reads it back for pixels and for the teacher's features.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from vistok.tokenizers.modules.conv import ResBlock, _norm


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, h, w) map. Without it the l2-normalised (cosine) codebook
    collapsed to one code in trial runs."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.norm(rearrange(x, "b c h w -> b h w c")), "b h w c -> b c h w")


class DualEncoder(nn.Module):
    """TokenFlow: two towers, E_sem and E_pix, on the same grid; output [semantic; pixel] channels.

    Args:
        semantic: (B, 3, H, W) -> (B, Ds, h, w).
        pixel: (B, 3, H, W) -> (B, Dp, h, w), or None for one tower (the single-codebook arm).
        semantic_dim, pixel_dim: Ds and Dp (a channel norm closes each branch).
    """

    def __init__(self, semantic: nn.Module, pixel: nn.Module | None, semantic_dim: int, pixel_dim: int):
        super().__init__()
        self.semantic, self.pixel = semantic, pixel
        self.semantic_norm = ChannelNorm(semantic_dim)
        self.pixel_norm = ChannelNorm(pixel_dim) if pixel is not None else None
        self.downsample = getattr(semantic, "downsample", 1)
        if pixel is not None and getattr(pixel, "downsample", 1) != self.downsample:
            raise ValueError("the semantic and pixel towers must produce the same grid")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        semantic = self.semantic_norm(self.semantic(images))  # (B, Ds, h, w)
        if self.pixel is None:
            return semantic
        return torch.cat([semantic, self.pixel_norm(self.pixel(images))], 1)  # (B, Ds + Dp, h, w)


class LayeredEncoder(nn.Module):
    """DualToken: one backbone; pixel features tapped from a shallow block, semantic from a deep one.

    A conv stem downsamples to the token grid, then `depth` residual blocks run at grid resolution. Block
    numbers count from 1; tapping both at the last block is the "same layer" ablation.

    Args:
        semantic_dim, pixel_dim: output widths Ds, Dp.
        base_channels, ch_mult: stem widths, one stride-2 downsample per extra level.
        depth: residual blocks at grid resolution.
        pixel_layer, semantic_layer: the blocks (1..depth) the two heads read.
        shortcut_layer, shortcut_weight: DualToken's released configs add `shortcut_weight` (0.6) times a
            third head's projection of block `shortcut_layer` (4) to the pixel features; None = no shortcut.
    """

    def __init__(self, semantic_dim: int = 16, pixel_dim: int = 8, base_channels: int = 16,
                 ch_mult: tuple[int, ...] = (1, 2, 4), depth: int = 4, pixel_layer: int = 1,
                 semantic_layer: int = 4, shortcut_layer: int | None = None, shortcut_weight: float = 0.6):
        super().__init__()
        if not (1 <= pixel_layer <= depth and 1 <= semantic_layer <= depth):
            raise ValueError(f"pixel_layer and semantic_layer must be in 1..{depth}")
        if shortcut_layer is not None and not 1 <= shortcut_layer <= semantic_layer:
            raise ValueError(f"shortcut_layer must be in 1..semantic_layer ({semantic_layer}), got {shortcut_layer}")
        widths = [base_channels * m for m in ch_mult]
        stem: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            stem.append(ResBlock(widths[max(level - 1, 0)], width))
            if level < len(widths) - 1:
                stem.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.ModuleList([ResBlock(widths[-1], widths[-1]) for _ in range(depth)])
        self.pixel_layer, self.semantic_layer = pixel_layer, semantic_layer
        self.pixel_head = _head(widths[-1], pixel_dim)
        self.semantic_head = _head(widths[-1], semantic_dim)
        self.shortcut_layer, self.shortcut_weight = shortcut_layer, shortcut_weight
        self.shortcut_head = _head(widths[-1], pixel_dim) if shortcut_layer is not None else None
        self.downsample = 2 ** (len(widths) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.stem(images)
        taps = {}
        for number, block in enumerate(self.blocks, start=1):
            h = block(h)
            taps[number] = h
        return torch.cat([self.semantic_head(taps[self.semantic_layer]), self._pixel_features(taps)], 1)

    def _pixel_features(self, taps: dict[int, torch.Tensor]) -> torch.Tensor:
        pixel = self.pixel_head(taps[self.pixel_layer])
        if self.shortcut_head is None:
            return pixel
        return pixel + self.shortcut_weight * self.shortcut_head(taps[self.shortcut_layer])


def _head(channels: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_dim, 1), ChannelNorm(out_dim))


class SemanticHead(nn.Module):
    """D_sem: the semantic half of the codes (B, Ds, h, w) -> the teacher's features (B, Dt, h, w)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_dim, hidden, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DualDecoder(nn.Module):
    """The pixel decoder and the semantic head side by side (one module group for stage freezing).

    Args:
        pixel: (B, Dp or D, h, w) -> images.
        semantic: (B, Ds, h, w) -> teacher features, or None (no semantic head).
        semantic_dim: Ds, the leading channels of the code map.
        pixel_reads: "both" (the whole fused pair) or "pixel" (the pixel half only, TokenFlow's layout).
    """

    def __init__(self, pixel: nn.Module, semantic: nn.Module | None, semantic_dim: int, pixel_reads: str = "both"):
        super().__init__()
        if pixel_reads not in ("both", "pixel"):
            raise ValueError(f"pixel_reads must be 'both' or 'pixel', got '{pixel_reads}'")
        self.pixel, self.semantic = pixel, semantic
        self.first_pixel_channel = semantic_dim if pixel_reads == "pixel" else 0

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) code map -> (B, 3, H, W)."""
        return self.pixel(codes[:, self.first_pixel_channel:])

    def semantics(self, semantic_codes: torch.Tensor) -> torch.Tensor:
        """(B, Ds, h, w) -> (B, Dt, h, w)."""
        if self.semantic is None:
            raise ValueError("this tokenizer has no semantic head (decoder.semantic is null)")
        return self.semantic(semantic_codes)
