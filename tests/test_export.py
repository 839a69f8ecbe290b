"""Export directories: identical outputs after loading, no training stack needed, untrusted input refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from vistok import load_tokenizer, save_tokenizer
from vistok.export import build_from_config

CONFIG = {
    "_target_": "vistok.tokenizers.vq.VQTokenizer",
    "resolution": 16,
    "embed_dim": 8,
    "encoder": {"_target_": "vistok.tokenizers.modules.conv.ConvEncoder", "out_dim": 8, "base_channels": 8,
                "ch_mult": [1, 2]},
    "quantizer": {"_target_": "vistok.tokenizers.quantizers.vq.VectorQuantizer", "dim": 8, "codebook_size": 32,
                  "kmeans_init": True},
    "decoder": {"_target_": "vistok.tokenizers.modules.conv.ConvDecoder", "in_dim": 8, "base_channels": 8,
                "ch_mult": [1, 2]},
}


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    tokenizer = build_from_config(CONFIG)
    tokenizer.train()
    tokenizer(torch.rand(8, 3, 16, 16) * 2 - 1)  # k-means init + EMA update: buffers differ from a fresh build
    tokenizer.eval()
    return tokenizer, save_tokenizer(tokenizer, CONFIG, tmp_path / "tok", {"step": 1})


def test_round_trip_gives_identical_indices_and_reconstructions(exported):
    tokenizer, path = exported
    loaded = load_tokenizer(path)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a, b = tokenizer.encode(images), loaded.encode(images)
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(tokenizer.decode(a.embeddings), loaded.decode(b.embeddings))


def test_loading_needs_no_training_stack(exported):
    _, path = exported
    code = (f"import sys, vistok; tok = vistok.load_tokenizer({str(path)!r}); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'wandb', 'hydra')]; "
            "print('BAD', bad); assert not bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tampered_config_is_refused_before_anything_runs(exported, tmp_path):
    _, path = exported
    marker = tmp_path / "pwned"
    config = yaml.safe_load((path / "config.yaml").read_text())
    config["encoder"] = {"_target_": "os.system", "command": f"touch {marker}"}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="refusing to instantiate 'os.system'"):
        load_tokenizer(path)
    assert not marker.exists()


def test_missing_or_truncated_weights_are_clear_errors(exported):
    _, path = exported
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_tokenizer(path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_tokenizer(path)


DIFFUSERS_CONFIG = {
    **CONFIG,
    "encoder": {"_target_": "vistok.tokenizers.modules.diffusers_blocks.DiffusersEncoder", "out_dim": 8,
                "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4},
    "decoder": {"_target_": "vistok.tokenizers.modules.diffusers_blocks.DiffusersDecoder", "in_dim": 8,
                "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4},
}


def test_diffusers_vqmodel_round_trip(tmp_path):
    from diffusers import VQModel

    from vistok.export_diffusers import save_vqmodel

    torch.manual_seed(0)
    tokenizer = build_from_config(DIFFUSERS_CONFIG)
    tokenizer.train()
    tokenizer(torch.rand(8, 3, 16, 16) * 2 - 1)
    tokenizer.eval()
    model = VQModel.from_pretrained(str(save_vqmodel(tokenizer, tmp_path / "vq"))).eval()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ours = tokenizer.encode(images)
        latents = model.encode(images).latents
        _, _, (_, _, indices) = model.quantize(latents)
        assert torch.equal(indices.view(4, -1), ours.indices[..., 0])
        assert torch.allclose(model.decode(latents).sample, tokenizer.decode(ours.embeddings), atol=1e-4)


def test_diffusers_export_refuses_what_it_cannot_represent(exported, tmp_path):
    from vistok.export_diffusers import save_vqmodel

    tokenizer, _ = exported  # conv blocks, not diffusers blocks
    with pytest.raises(ValueError, match="not diffusers blocks"):
        save_vqmodel(tokenizer, tmp_path / "vq")


def test_evaluate_script_on_shards(exported, tmp_path):
    import json

    from scripts.evaluate import main
    from vistok.data.generated import write_shards

    _, path = exported
    write_shards(str(tmp_path / "shards"), "val", 20, seed=1, resolution=16, samples_per_shard=10)
    assert main([str(path), f"data={tmp_path / 'shards'}", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    assert metrics["images"] == 20 and 0 < metrics["psnr"] < 60 and 0 < metrics["codebook_usage"] <= 1


def test_tokenize_shards_writes_token_shards_that_read_back(exported, tmp_path):
    import io

    import numpy as np
    import webdataset as wds

    from scripts.tokenize_shards import main
    from vistok.data.generated import write_shards
    from vistok.data.wds import make_val_loader

    tokenizer, path = exported
    write_shards(str(tmp_path / "shards"), "val", 12, seed=2, resolution=16, samples_per_shard=5)
    assert main([str(path), "--input", str(tmp_path / "shards"), "--output", str(tmp_path / "tokens"),
                 "--batch-size", "4", "--samples-per-shard", "8"]) == 0
    assert len(list((tmp_path / "tokens").glob("tokens-*.tar"))) == 2
    samples = {s["__key__"]: s for s in wds.WebDataset(sorted(map(str, (tmp_path / "tokens").glob("*.tar"))),
                                                        shardshuffle=False)}
    assert len(samples) == 12
    batch = next(iter(make_val_loader(sorted(map(str, (tmp_path / "shards").glob("*.tar"))), 4, 16, 0, 1, 0)))
    with torch.no_grad():
        expected = tokenizer.encode(batch["image"]).indices.numpy()
    for i, key in enumerate(batch["key"]):
        tokens = np.load(io.BytesIO(samples[key]["tokens.npy"]))
        assert tokens.shape == (64, 1) and (tokens == expected[i]).all()
        assert samples[key]["txt"].decode() == batch["caption"][i]


# ---- Hugging Face Hub layout ------------------------------------------------------------------------


def test_export_is_a_pytorch_model_hub_mixin_directory(exported, tmp_path):
    """config.json + model.safetensors load through huggingface_hub's mixin (offline, local directory), and
    what the mixin saves loads back with `vistok.load_tokenizer`."""
    from vistok.hub import HubTokenizer

    tokenizer, path = exported
    hub = HubTokenizer.from_pretrained(path)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(hub.tokenizer.encode(images).indices, tokenizer.encode(images).indices)
    hub.save_pretrained(tmp_path / "saved")
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "saved").iterdir()}
    with torch.no_grad():
        assert torch.equal(load_tokenizer(tmp_path / "saved").encode(images).indices, tokenizer.encode(images).indices)


def test_tampered_hub_config_is_refused_and_disagreeing_configs_are_an_error(exported, tmp_path):
    import json

    from vistok.hub import HubTokenizer

    _, path = exported
    marker = tmp_path / "pwned"
    config = json.loads((path / "config.json").read_text())
    honest = json.dumps(config)
    config["tokenizer"]["quantizer"]["codebook_size"] = 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json and config.yaml describe different tokenizers"):
        load_tokenizer(path)
    config["tokenizer"]["encoder"] = {"_target_": "os.system", "command": f"touch {marker}"}
    (path / "config.json").write_text(json.dumps(config))
    for load in (load_tokenizer, HubTokenizer.from_pretrained):
        with pytest.raises(ValueError, match="refusing to instantiate 'os.system'"):
            load(path)
    assert not marker.exists()
    (path / "config.json").write_text(honest)
    assert load_tokenizer(path) is not None


def test_push_to_hub_uploads_the_export_directory_as_is(exported, monkeypatch):
    import huggingface_hub

    from vistok.hub import push_to_hub

    _, path = exported
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, folder_path, repo_id, **kw: calls.append(("upload", folder_path, repo_id)) or "url")
    assert push_to_hub(path, "someone/tok") == "url"
    assert calls == [("create", "someone/tok"), ("upload", str(path), "someone/tok")]
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        push_to_hub(path, "someone/tok")


def test_scripts_export_runs_without_lightning_or_hydra(exported, tmp_path):
    """`python -m scripts.export RUN OUT` where only the model's own stack is installed."""
    tokenizer, _ = exported
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"tokenizer": CONFIG, "stages": {"tok": {}}}))
    (run_dir / "checkpoints" / "tok").mkdir(parents=True)
    state = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 7}, run_dir / "checkpoints" / "tok" / "last.ckpt")
    blocked = ("lightning", "pytorch_lightning", "hydra")
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            f"        if name.split('.')[0] in {blocked!r}: raise ImportError('not installed: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from scripts import export\n"
            f"sys.exit(export.main([{str(run_dir)!r}, {str(tmp_path / 'out')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_tokenizer(tmp_path / "out").codebook_size == 32
