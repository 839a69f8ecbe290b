"""Exports on the Hugging Face Hub: `PyTorchModelHubMixin` over vistok's export layout.

An export directory already has the mixin's layout (`config.json` with the init kwargs, `model.safetensors`,
a README model card), so `HubTokenizer.from_pretrained` loads a local export or a Hub repo, and
`push_to_hub` uploads a whole export directory (meta.json included) as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import HfApi, PyTorchModelHubMixin
from safetensors.torch import save_file
from torch import nn

from vistok.export import check_targets, build_from_config, cpu_state, read_weights


class HubTokenizer(nn.Module, PyTorchModelHubMixin, library_name="vistok", tags=["vistok", "image-tokenizer"]):
    """A vistok tokenizer as a Hub model; the tokenizer itself is `.tokenizer`.

    `config.json` holds {"tokenizer": <the `_target_` tree>}; only `vistok.` classes are built from it.
    Weights are the tokenizer's own state dict (no prefix), exactly as `vistok.save_tokenizer` writes them.
    """

    def __init__(self, tokenizer: dict):
        super().__init__()
        check_targets(tokenizer)
        self.tokenizer = build_from_config(tokenizer)

    def forward(self, images: torch.Tensor):
        return self.tokenizer(images)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_file(cpu_state(self.tokenizer), str(Path(save_directory) / "model.safetensors"))

    @classmethod
    def _load_as_safetensor(cls, model: HubTokenizer, model_file: str, map_location: str, strict: bool):
        model.tokenizer.load_state_dict(read_weights(Path(model_file), map_location), strict=True)
        return model.eval()


def push_to_hub(export_dir: str | Path, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload vistok tokenizer") -> str:
    """Upload an export directory to the Hub (creating the model repo if needed). Returns the commit URL."""
    export_dir = Path(export_dir)
    for name in ("config.json", "model.safetensors"):
        if not (export_dir / name).is_file():
            raise FileNotFoundError(f"{export_dir} is not a vistok export with a Hub config: {name} is missing "
                                    "(re-export it with `python -m scripts.export`)")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return str(api.upload_folder(folder_path=str(export_dir), repo_id=repo_id, commit_message=commit_message))
