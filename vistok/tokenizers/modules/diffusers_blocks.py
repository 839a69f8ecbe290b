"""Encoder / decoder built from diffusers' VAE blocks, so a single-codebook VQ tokenizer maps 1:1 onto
`diffusers.VQModel` (see vistok.export_diffusers)."""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn


class DiffusersEncoder(nn.Module):
    """(B, 3, H, W) -> (B, out_dim, H / 2**(levels-1), ...) with diffusers' `Encoder` (double_z off).

    Args:
        out_dim: latent channels D (= the quantizer's dim).
        block_out_channels: width per level; one stride-2 downsample between levels.
        layers_per_block: resnets per level.
        norm_num_groups: GroupNorm groups (every width must divide by it).
        mid_block_add_attention: self-attention in the middle block.
    """

    def __init__(self, in_channels: int = 3, out_dim: int = 16, block_out_channels: tuple[int, ...] = (32, 64, 64),
                 layers_per_block: int = 1, norm_num_groups: int = 8, mid_block_add_attention: bool = True):
        super().__init__()
        self.net = Encoder(in_channels=in_channels, out_channels=out_dim,
                           down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
                           block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                           norm_num_groups=norm_num_groups, act_fn="silu", double_z=False,
                           mid_block_add_attention=mid_block_add_attention)
        self.downsample = 2 ** (len(block_out_channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiffusersDecoder(nn.Module):
    """(B, in_dim, h, w) -> (B, 3, h * 2**(levels-1), ...) with diffusers' `Decoder` (VQModel's layout)."""

    def __init__(self, in_dim: int = 16, out_channels: int = 3, block_out_channels: tuple[int, ...] = (32, 64, 64),
                 layers_per_block: int = 1, norm_num_groups: int = 8, mid_block_add_attention: bool = True):
        super().__init__()
        self.net = Decoder(in_channels=in_dim, out_channels=out_channels,
                           up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
                           block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                           norm_num_groups=norm_num_groups, act_fn="silu", norm_type="group",
                           mid_block_add_attention=mid_block_add_attention)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
