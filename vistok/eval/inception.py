"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph as ported for FID) as pooled 2048-d features.

Parameter names follow the FID Inception checkpoint (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.*`,
...), so its weight file loads as it is. The FID variant differs from a standard Inception-v3 in two places,
both kept here: average pools exclude padding, and the last block pools with a max instead of an average.

Each mixed block is data: a list of branches, each an optional pool followed by convolutions, optionally
ending in a fork of parallel convolutions whose outputs are concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 2048
INPUT_SIZE = 299

# (name, out_channels, kernel, stride, padding); kernel/padding may be (h, w) pairs.
Conv = tuple


@dataclass
class Branch:
    convs: list[Conv]
    pool: str | None = None  # "avg" (3x3, padding excluded), "max" (3x3 stride 1), "max_s2" (3x3 stride 2)
    fork: list[Conv] = field(default_factory=list)


def _c(name: str, out: int, kernel=1, stride: int = 1, padding=0) -> Conv:
    return (name, out, kernel, stride, padding)


def _block_a(pool_features: int) -> list[Branch]:
    return [
        Branch([_c("branch1x1", 64)]),
        Branch([_c("branch5x5_1", 48), _c("branch5x5_2", 64, 5, 1, 2)]),
        Branch([_c("branch3x3dbl_1", 64), _c("branch3x3dbl_2", 96, 3, 1, 1),
                _c("branch3x3dbl_3", 96, 3, 1, 1)]),
        Branch([_c("branch_pool", pool_features)], pool="avg"),
    ]


def _block_b() -> list[Branch]:
    return [
        Branch([_c("branch3x3", 384, 3, 2)]),
        Branch([_c("branch3x3dbl_1", 64), _c("branch3x3dbl_2", 96, 3, 1, 1), _c("branch3x3dbl_3", 96, 3, 2)]),
        Branch([], pool="max_s2"),
    ]


def _block_c(c7: int) -> list[Branch]:
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the factorised 7x7
    return [
        Branch([_c("branch1x1", 192)]),
        Branch([_c("branch7x7_1", c7), _c("branch7x7_2", c7, row[0], 1, row[1]),
                _c("branch7x7_3", 192, col[0], 1, col[1])]),
        Branch([_c("branch7x7dbl_1", c7), _c("branch7x7dbl_2", c7, col[0], 1, col[1]),
                _c("branch7x7dbl_3", c7, row[0], 1, row[1]), _c("branch7x7dbl_4", c7, col[0], 1, col[1]),
                _c("branch7x7dbl_5", 192, row[0], 1, row[1])]),
        Branch([_c("branch_pool", 192)], pool="avg"),
    ]


def _block_d() -> list[Branch]:
    return [
        Branch([_c("branch3x3_1", 192), _c("branch3x3_2", 320, 3, 2)]),
        Branch([_c("branch7x7x3_1", 192), _c("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
                _c("branch7x7x3_3", 192, (7, 1), 1, (3, 0)), _c("branch7x7x3_4", 192, 3, 2)]),
        Branch([], pool="max_s2"),
    ]


def _block_e(pool: str) -> list[Branch]:
    def split(prefix: str) -> list[Conv]:
        return [_c(f"{prefix}a", 384, (1, 3), 1, (0, 1)), _c(f"{prefix}b", 384, (3, 1), 1, (1, 0))]

    return [
        Branch([_c("branch1x1", 320)]),
        Branch([_c("branch3x3_1", 384)], fork=split("branch3x3_2")),
        Branch([_c("branch3x3dbl_1", 448), _c("branch3x3dbl_2", 384, 3, 1, 1)], fork=split("branch3x3dbl_3")),
        Branch([_c("branch_pool", 192)], pool=pool),
    ]


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, as in the TensorFlow graph) -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool(x: torch.Tensor, kind: str | None) -> torch.Tensor:
    if kind == "avg":
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if kind == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    if kind == "max_s2":
        return F.max_pool2d(x, 3, stride=2)
    return x


class MixedBlock(nn.Module):
    """Parallel branches over one input, concatenated: (B, C_in, H, W) -> (B, out_channels, H', W')."""

    def __init__(self, in_channels: int, branches: list[Branch]):
        super().__init__()
        self.branches = branches
        self.out_channels = 0
        for branch in branches:
            channels = in_channels
            for name, out, kernel, stride, padding in branch.convs:
                self.add_module(name, ConvBN(channels, out, kernel, stride, padding))
                channels = out
            for name, out, kernel, stride, padding in branch.fork:
                self.add_module(name, ConvBN(channels, out, kernel, stride, padding))
            self.out_channels += sum(conv[1] for conv in branch.fork) if branch.fork else channels

    def _run(self, x: torch.Tensor, branch: Branch) -> torch.Tensor:
        x = _pool(x, branch.pool)
        for conv in branch.convs:
            x = getattr(self, conv[0])(x)
        if branch.fork:
            x = torch.cat([getattr(self, conv[0])(x) for conv in branch.fork], dim=1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._run(x, branch) for branch in self.branches], dim=1)


# (name, out_channels, kernel, stride, padding) convolutions and 3x3 stride-2 max pools, in order.
_STEM = [("Conv2d_1a_3x3", 32, 3, 2, 0), ("Conv2d_2a_3x3", 32, 3, 1, 0), ("Conv2d_2b_3x3", 64, 3, 1, 1),
         "pool", ("Conv2d_3b_1x1", 80, 1, 1, 0), ("Conv2d_4a_3x3", 192, 3, 1, 0), "pool"]
_MIXED = [("Mixed_5b", _block_a(32)), ("Mixed_5c", _block_a(64)), ("Mixed_5d", _block_a(64)),
          ("Mixed_6a", _block_b()), ("Mixed_6b", _block_c(128)), ("Mixed_6c", _block_c(160)),
          ("Mixed_6d", _block_c(160)), ("Mixed_6e", _block_c(192)), ("Mixed_7a", _block_d()),
          ("Mixed_7b", _block_e("avg")), ("Mixed_7c", _block_e("max"))]


class FIDInception(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> (B, 2048) pooled features of the FID Inception-v3.

    Inputs are resized to 299x299 bilinearly (align_corners=False, no antialias), as pytorch-fid does.
    """

    feature_dim = FEATURE_DIM
    description = "FID Inception-v3 (TF 2015-12-05 graph), pool3 2048-d, input bilinear-resized to 299"

    def __init__(self):
        super().__init__()
        self.stem: list[str] = []
        channels = 3
        for item in _STEM:
            if item == "pool":
                self.stem.append("pool")
                continue
            name, out, kernel, stride, padding = item
            self.add_module(name, ConvBN(channels, out, kernel, stride, padding))
            self.stem.append(name)
            channels = out
        for name, branches in _MIXED:
            block = MixedBlock(channels, branches)
            self.add_module(name, block)
            channels = block.out_channels
        assert channels == FEATURE_DIM, channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        for name in self.stem:
            x = F.max_pool2d(x, 3, stride=2) if name == "pool" else getattr(self, name)(x)
        for name, _ in _MIXED:
            x = getattr(self, name)(x)  # (B, 2048, 8, 8) after Mixed_7c
        return x.mean(dim=(2, 3))

    def train(self, mode: bool = True):
        return super().train(False)  # BatchNorm must keep the checkpoint's statistics
