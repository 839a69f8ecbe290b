"""Frozen image feature extractors for rFID, built in-repo and filled from a local weight file.

Nothing is downloaded: the weight file decides the network. A file holding the FID Inception-v3 tensors
(pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, or the same tensors as `.safetensors`) gives
`FIDInception`; a safetensors file with `convs.<i>.weight/bias` gives `ConvFeatures`, a small conv net
whose widths are read from the file (handy for tests and for quick relative comparisons).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vistok.eval.inception import FIDInception

WHAT_TO_PUT_THERE = (
    "put there the FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or the same "
    "tensors saved as .safetensors), or a small conv feature net saved as safetensors "
    "(keys convs.<i>.weight and convs.<i>.bias, see vistok.eval.features.ConvFeatures)"
)
_IGNORED = ("num_batches_tracked", "fc.")  # BatchNorm counters and the classifier play no part in features


class ConvFeatures(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> (B, widths[-1]): 3x3 stride-2 convs with ReLU, then a global mean.

    Works at any resolution (no resize), so numbers are comparable only at one resolution.
    """

    def __init__(self, widths: list[int]):
        super().__init__()
        channels = [3, *widths]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(channels, widths))
        self.feature_dim = widths[-1]
        self.description = f"ConvFeatures widths {list(widths)}, global mean pool, native resolution"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for conv in self.convs:
            x = F.relu(conv(x))
        return x.mean(dim=(2, 3))


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` or a torch file (tensors only: `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rFID feature weights not found: {path}; {WHAT_TO_PUT_THERE}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict; {WHAT_TO_PUT_THERE}")
    return state


def file_digest(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256: names the exact weights in a protocol record."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _kept(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not any(part in k for part in _IGNORED)}


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """Load every feature tensor; a missing or extra one is an error that names a few of them."""
    expected, given = _kept(model.state_dict()), _kept(state)
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not match {type(model).__name__}: missing {missing[:5]} "
                         f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all); "
                         f"{WHAT_TO_PUT_THERE}")
    model.load_state_dict(given, strict=False)
    return model


def _conv_widths(state: dict[str, torch.Tensor]) -> list[int]:
    count = len([k for k in state if k.startswith("convs.") and k.endswith(".weight")])
    return [int(state[f"convs.{i}.weight"].shape[0]) for i in range(count)]


def load_feature_extractor(path: str | Path) -> nn.Module:
    """The frozen, eval-mode extractor that the weight file at `path` describes (see the module docstring)."""
    path = Path(path)
    state = read_weight_file(path)
    if "Mixed_7c.branch_pool.conv.weight" in state:
        model = _load_strict(FIDInception(), state, path)
    elif "convs.0.weight" in state:
        model = _load_strict(ConvFeatures(_conv_widths(state)), state, path)
    else:
        raise ValueError(f"{path} holds neither FID Inception nor ConvFeatures weights "
                         f"(first keys: {list(state)[:3]}); {WHAT_TO_PUT_THERE}")
    return model.eval().requires_grad_(False)
