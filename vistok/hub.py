"""Exports on the Hugging Face Hub: `PyTorchModelHubMixin` over vistok's export layout.

An export directory already has the mixin's layout (`config.json` with the init kwargs, `model.safetensors`,
a README model card), so `HubTokenizer.from_pretrained` loads a local export or a Hub repo, and
`push_to_hub` uploads a whole export directory (meta.json included) as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from huggingface_hub import HfApi, PyTorchModelHubMixin, constants, hf_hub_download
from safetensors.torch import save_file
from torch import nn

from vistok import untrusted
from vistok.export import cpu_state, read_weights


class HubTokenizer(nn.Module, PyTorchModelHubMixin, library_name="vistok", tags=["vistok", "image-tokenizer"]):
    """A vistok tokenizer as a Hub model; the tokenizer itself is `.tokenizer`.

    `config.json` holds {"tokenizer": <the `_target_` tree>}; it is built through `vistok.untrusted` (exact
    allow-listed classes, no interpolation, sizes checked against `model.safetensors` first). Weights are the
    tokenizer's own state dict (no prefix), exactly as `vistok.save_tokenizer` writes them; a repo's pickled
    `pytorch_model.bin` is never read.
    """

    def __init__(self, tokenizer: dict):
        super().__init__()
        self.tokenizer = untrusted.build(tokenizer, "HubTokenizer config")

    def forward(self, images: torch.Tensor):
        return self.tokenizer(images)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_file(cpu_state(self.tokenizer), str(Path(save_directory) / "model.safetensors"))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str = "cpu", strict: bool = False, **model_kwargs) -> HubTokenizer:
        """Find the weights first, so the config's sizes are checked against them before anything is built."""
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
        else:
            model_file = hf_hub_download(repo_id=model_id, filename=constants.SAFETENSORS_SINGLE_FILE,
                                         revision=revision, cache_dir=cache_dir, token=token,
                                         force_download=force_download, local_files_only=local_files_only)
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"{model_id} is not a vistok export: "
                                    f"{constants.SAFETENSORS_SINGLE_FILE} is missing")
        config = model_kwargs.get("tokenizer")
        if not isinstance(config, dict):
            raise ValueError(f"{model_id}: config.json has no 'tokenizer' tree: not a vistok export")
        untrusted.check_sizes(config, untrusted.weight_shapes(model_file), f"{model_id} config.json")
        return cls._load_as_safetensor(cls(**model_kwargs), model_file, map_location, strict)

    @classmethod
    def _load_as_pickle(cls, model: HubTokenizer, model_file: str, map_location: str, strict: bool):
        raise ValueError(f"refusing {model_file}: vistok exports are safetensors; pickled weights are never "
                         "read")

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
