"""Frozen semantic teachers for the dual family's distillation loss: `teacher(images) -> (B, Dt, h, w)`.

- `load_teacher(path)`: a local directory holding a saved vistok module (`config.yaml` + `model.safetensors`,
  e.g. a mini-CLIP built earlier; built through `vistok.untrusted` like any export) or any Hugging Face
  vision model (`config.json` + safetensors weights); never downloaded, never unpickled.
- `vistok.teachers.mini_clip.build_mini_clip`: the embedded default, a tiny CLIP trained on the dataset's
  image-caption pairs in the run's prepare phase and saved as a vistok module (then loaded as above).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def load_teacher(path: str | None, layer: int = -2, build: dict | None = None) -> nn.Module:
    """A frozen teacher from a local directory (vistok export or Hugging Face vision model).

    `build` describes a teacher the run's prepare phase trains (`vistok.training.prepare`), which then sets
    `path` to its folder; it is not read here.
    """
    if path is None:
        raise ValueError("the semantic teacher has no path: set module.semantic.teacher.path to a local directory"
                         + (", or run through the prepare phase, which builds it" if build else ""))
    folder = Path(path)
    if (folder / "config.yaml").is_file() and (folder / "model.safetensors").is_file():
        from vistok.export import load_tokenizer  # loads any exported vistok module, not only tokenizers

        return freeze(load_tokenizer(folder))
    if (folder / "config.json").is_file():
        from vistok.teachers.hf import HFVisionTeacher

        return freeze(HFVisionTeacher(str(folder), layer=layer))
    raise FileNotFoundError(f"{folder} holds neither a vistok module (config.yaml + model.safetensors) "
                            "nor a Hugging Face model (config.json); teachers are never downloaded")
