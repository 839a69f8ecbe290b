"""An optional rectified-flow decoder for 1-D token tokenizers (FlexTok's decoder, arXiv 2502.13967), tiny.

x_t = sigma * noise + (1 - sigma) * x0; the network predicts the velocity v = noise - x0 from x_t, sigma and
the (masked) tokens; sampling integrates from pure noise with diffusers' `FlowMatchEulerDiscreteScheduler`.
A deterministic head reads the same tokens through the same ViT (patch input = no noise, sigma = 0 flag off),
so training can keep a pixel loss and the flow term side by side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from einops import rearrange
from torch import nn

from vistok.tokenizers.modules.vit import LatentTokenDecoder


def timestep_features(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) sigma in [0, 1] -> (B, dim) sinusoidal features."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=sigma.device) / (dim // 2))
    angles = 1000.0 * sigma[:, None].float() * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowDecoder(nn.Module):
    """Tokens -> image, deterministically (training, and eval unless `sample`) or by a few Euler steps of flow.

    Args:
        body: a `LatentTokenDecoder` (no 2x2 split) shared by both heads.
        steps: Euler steps at sampling time (FlexTok: 20-25; mini: ~10).
        sample: eval-mode `forward` samples with the flow instead of the deterministic head.
        seed: sampling noise seed (eval PSNR is then reproducible).
    """

    def __init__(self, body: LatentTokenDecoder, steps: int = 10, sample: bool = False, seed: int = 0):
        super().__init__()
        if body.split_after is not None:
            raise ValueError("FlowDecoder needs a body without a 2x2 patch split")
        width = body.to_pixels.in_features
        self.body, self.steps, self.sample, self.seed = body, steps, sample, seed
        self.num_tokens, self.patch_size = body.num_tokens, body.patch_size
        self.noisy_in = nn.Conv2d(3, width, body.patch_size, stride=body.patch_size)
        self.time_in = nn.Sequential(nn.Linear(64, width), nn.SiLU(), nn.Linear(width, width))
        self.flow_flag = nn.Parameter(torch.zeros(1, 1, width))  # tells the body which head it is

    def velocity(self, tokens: torch.Tensor, mask: torch.Tensor | None, noisy: torch.Tensor,
                 sigma: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens, key mask, x_t (B, 3, H, W), sigma (B,) -> v (B, 3, H, W)."""
        extra = rearrange(self.noisy_in(noisy), "b c h w -> b (h w) c")  # (B, P, width)
        extra = extra + self.time_in(timestep_features(sigma, 64))[:, None] + self.flow_flag
        return self.body(tokens, mask, patch_extra=extra)

    def loss(self, tokens: torch.Tensor, mask: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
        """Flow-matching MSE with sigma ~ logit-normal (FlexTok's noise schedule)."""
        noise = torch.randn_like(images)
        sigma = torch.sigmoid(torch.randn(images.shape[0], device=images.device))
        noisy = sigma[:, None, None, None] * noise + (1 - sigma[:, None, None, None]) * images
        return F.mse_loss(self.velocity(tokens, mask, noisy, sigma), noise - images)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Euler sampling from noise, conditioned on the tokens: (B, N, D) -> (B, 3, H, W)."""
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(self.steps, device=tokens.device)
        side = self.body.grid * self.patch_size
        generator = torch.Generator(device=tokens.device).manual_seed(self.seed)
        x = torch.randn(tokens.shape[0], 3, side, side, generator=generator, device=tokens.device)
        for t in scheduler.timesteps:
            sigma = (t / scheduler.config.num_train_timesteps).expand(tokens.shape[0])
            x = scheduler.step(self.velocity(tokens, mask, x, sigma), t, x).prev_sample
        return x

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.sample and not self.training:
            return self.generate(tokens, mask)
        return self.body(tokens, mask)
