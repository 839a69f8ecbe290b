"""PatchGAN discriminator with hinge losses and optional LeCAM regularisation (training side only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok import dist


class PatchDiscriminator(nn.Module):
    """(B, 3, H, W) -> (B, 1, h, w) real/fake logits per patch (pix2pix N-layer design).

    Args:
        channels: width of the first layer; doubles per layer up to 8x.
        num_layers: stride-2 layers (receptive field grows with depth).
    """

    def __init__(self, in_channels: int = 3, channels: int = 32, num_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            nxt = channels * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(width, nxt, 4, stride=stride, padding=1), nn.GroupNorm(1, nxt), nn.LeakyReLU(0.2)]
            width = nxt
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


class LeCAM(nn.Module):
    """LeCAM regulariser: keeps discriminator logits near EMAs of the opposite class (stabilises small data).

    The EMAs are buffers so they are checkpointed with the module. They track the logit means over all
    ranks (all-reduced), so every rank keeps the same EMAs under DDP/FSDP.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("real_ema", torch.zeros(()))
        self.register_buffer("fake_ema", torch.zeros(()))

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            means = dist.all_reduce_mean(torch.stack([real_logits.mean(), fake_logits.mean()]).float())
            self.real_ema.lerp_(means[0].to(self.real_ema.dtype), 1 - self.decay)
            self.fake_ema.lerp_(means[1].to(self.fake_ema.dtype), 1 - self.decay)
        return (F.relu(real_logits - self.fake_ema).pow(2).mean()
                + F.relu(self.real_ema - fake_logits).pow(2).mean())
