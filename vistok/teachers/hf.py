"""Any Hugging Face vision model (CLIP, SigLIP, ViT, DINOv2 ...) from a local directory, as a feature-map teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class HFVisionTeacher(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> (B, C, g, g) patch features of one hidden layer.

    Images are resized to the model's input size and normalised with its processor's mean / std
    (`preprocessor_config.json`, else 0.5 / 0.5). Leading non-patch tokens (CLS, registers) are dropped.
    TokenFlow and DualToken distil from the penultimate layer (`layer=-2`).

    Args:
        path: local model directory (loaded with `local_files_only=True` from safetensors weights only: a
            directory from elsewhere never unpickles anything or runs its own code).
        layer: index into `hidden_states`.
    """

    def __init__(self, path: str, layer: int = -2):
        super().__init__()
        from transformers import AutoModel

        model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False)
        self.model = getattr(model, "vision_model", model)  # CLIP / SigLIP: the image tower
        config = getattr(model.config, "vision_config", model.config)
        self.image_size = int(getattr(config, "image_size", 224))
        self.dim = int(config.hidden_size)
        self.layer = layer
        mean, std = _normalisation(Path(path))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((images + 1) / 2, size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states[self.layer]  # (B, T, C)
        side = math.isqrt(hidden.shape[1])
        patches = hidden[:, hidden.shape[1] - side * side:]  # drop leading CLS / register tokens
        return rearrange(patches, "b (h w) c -> b c h w", h=side)


def _normalisation(folder: Path) -> tuple[list[float], list[float]]:
    config = folder / "preprocessor_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if "image_mean" in data and "image_std" in data:
            return list(data["image_mean"]), list(data["image_std"])
    return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
