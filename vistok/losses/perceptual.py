"""LPIPS (VGG16 variant) from local weight files: never downloads anything.

Weights come from two files a user places on disk: the VGG16 backbone as a torchvision-layout state
dict (`features.<i>.weight/bias`) and LPIPS' linear heads (`lin<k>.model.1.weight`, shipped in the
`lpips` wheel as `weights/v0.1/vgg.pth`). A configured path that does not exist is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# torchvision vgg16().features layout: (out_channels or "M" for max-pool); LPIPS taps after these ReLUs.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features`
_CHANNELS = (64, 128, 256, 512, 512)


def _vgg_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=False)]
            in_ch = item
    return nn.Sequential(*layers)


def _load(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS {what} weights not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """Learned perceptual distance between image batches in [-1, 1]: (B, 3, H, W) x 2 -> scalar mean.

    Args:
        vgg_path: torchvision-layout VGG16 state dict (keys `features.*` or bare `<i>.weight`).
        heads_path: LPIPS linear heads (`lin0.model.1.weight` ... `lin4.model.1.weight`).
    """

    def __init__(self, vgg_path: str, heads_path: str):
        super().__init__()
        self.features = _vgg_features()
        vgg = _load(vgg_path, "VGG16 backbone")
        vgg = {k.removeprefix("features."): v for k, v in vgg.items() if not k.startswith("classifier.")}
        self.features.load_state_dict(vgg)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        heads = _load(heads_path, "linear heads")
        for i, head in enumerate(self.heads):
            head.weight.data.copy_(heads[f"lin{i}.model.1.weight"])
        # ImageNet-style input scaling used by LPIPS, for inputs in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, taps = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                taps.append(x)
            if i == _TAPS[-1]:
                break
        return taps

    def forward(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        total = images.new_zeros(())
        for head, a, b in zip(self.heads, self._taps(images), self._taps(recon)):
            diff = (F.normalize(a, dim=1, eps=1e-10) - F.normalize(b, dim=1, eps=1e-10)) ** 2
            total = total + head(diff).mean()
        return total

    def train(self, mode: bool = True):
        return super().train(False)  # a fixed metric network: never in training mode
