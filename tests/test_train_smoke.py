"""`python train.py` end to end, as a user runs it: run directory contents, metrics.json, export, resume."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_train

TINY_LLM = ["llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]


def check_run_dir(run_dir, experiment: str, stages: list[str]) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["experiment"] == experiment
    assert list(metrics["stages"]) == stages
    assert metrics["steps"] > 0 and metrics["wall_seconds"] > 0
    for stage in stages:
        assert (run_dir / "checkpoints" / stage / "last.ckpt").is_file()
        assert (run_dir / "images" / f"recon_{stage}.png").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert {"model.safetensors", "config.yaml", "meta.json"} <= {p.name for p in (run_dir / "tokenizer").iterdir()}
    final = metrics["final"]
    assert 0 < final["psnr"] < 60 and 0 < final["codebook_usage"] <= 1 and final["data_skipped"] == 0
    return metrics


@pytest.mark.slow
def test_vq_mini_tiny_run_and_export_round_trip(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_train(["experiment=vq_mini", "debug=tiny"], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    check_run_dir(run_dir, "vq_mini", ["tokenizer"])
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb should log offline into the run directory"

    from vistok import load_tokenizer
    from vistok.data.wds import expand_urls, make_val_loader

    tokenizer = load_tokenizer(run_dir / "tokenizer")
    state = torch.load(run_dir / "checkpoints" / "tokenizer" / "last.ckpt", weights_only=False)["state_dict"]
    exported = tokenizer.state_dict()
    assert all(torch.equal(exported[k], state[f"model.tokenizer.{k}"]) for k in exported)
    urls = expand_urls(str(next(cache_dir.glob("data/*/val-*.tar")).parent))
    batch = next(iter(make_val_loader([u for u in urls if "/val-" in u], 8, 32, 0, 1, 0)))
    with torch.no_grad():
        out = tokenizer.encode(batch["image"])
        assert torch.allclose(tokenizer.lookup(out.indices), out.embeddings)

    from scripts.export import main as export_main

    assert export_main([str(run_dir), str(tmp_path / "again")]) == 0
    again = load_tokenizer(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again.encode(batch["image"]).indices, out.indices)
    assert export_main([str(run_dir), str(tmp_path / "vqmodel"), "--format", "diffusers"]) == 0

    from diffusers import VQModel

    model = VQModel.from_pretrained(str(tmp_path / "vqmodel")).eval()
    with torch.no_grad():
        _, _, (_, _, indices) = model.quantize(model.encode(batch["image"]).latents)
    assert torch.equal(indices.view(out.indices.shape[0], -1), out.indices[..., 0])


@pytest.mark.slow
def test_ett_mini_tiny_run_then_resume_skips_finished_stages(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_train(["debug=tiny", *TINY_LLM], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_run_dir(run_dir, "ett_mini", ["tokenizer", "align", "ett", "post"])
    for key in ("caption_loss", "caption_token_accuracy", "caption_exact_match", "attribute_accuracy",
                "attribute_accuracy/mark"):
        assert key in metrics["final"], key
    from transformers import AutoModelForCausalLM

    from vistok.export import build_from_config

    llm = AutoModelForCausalLM.from_pretrained(str(run_dir / "llm"), local_files_only=True)
    import yaml

    projector = build_from_config(yaml.safe_load((run_dir / "llm" / "projector" / "config.yaml").read_text()))
    assert projector(torch.zeros(1, 64, 16)).shape == (1, 64, llm.config.hidden_size)
    captions = json.loads((run_dir / "sample_captions.json").read_text())
    # Every stage with an LLM attached is captioned, the tokenizer stage too (an untrained-LLM baseline).
    assert set(captions) == {"tokenizer", "align", "ett", "post"} and captions["ett"][0]["reference"]

    again = run_train(["debug=tiny", *TINY_LLM], run_dir, cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already finished") == 4
