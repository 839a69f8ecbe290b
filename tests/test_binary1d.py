"""The `binary1d` family: ViT latent-token tokenizer with K-bit binary tokens (Instella-T2I 1D-BIT)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_train, train_tiny
from vistok import load_tokenizer, save_tokenizer
from vistok.eval.bits import bit_entropy
from vistok.eval.tokens import code_histogram, codebook_stats
from vistok.export import build_from_config
from vistok.tokenizers.base import TokenizerOutput
from vistok.tokenizers.quantizers.binary import BinaryQuantizer, pack_bits, unpack_bits
from vistok.tokenizers.quantizers.lfq import LookupFreeQuantizer
from vistok.training.evaluation import UsageWindow, ValidationAccumulator

D, N, RES = 16, 8, 16


def config(quantizer: dict | None = None, rope_axes: list[int] | None = None, resample: int | None = None) -> dict:
    vit = {"resolution": RES, "patch_size": 4, "num_tokens": N, "width": 32, "depth": 2, "heads": 2,
           "rope_axes": rope_axes}
    return {
        "_target_": "vistok.tokenizers.binary1d.Binary1DTokenizer", "num_tokens": N, "embed_dim": D,
        "encoder": {"_target_": "vistok.tokenizers.modules.vit.LatentTokenEncoder", "out_dim": D,
                    "merge_after": resample, **vit},
        "quantizer": quantizer or {"_target_": "vistok.tokenizers.quantizers.binary.BinaryQuantizer", "dim": D,
                                   "bits": 8},
        "decoder": {"_target_": "vistok.tokenizers.modules.vit.LatentTokenDecoder", "in_dim": D,
                    "split_after": resample, **vit},
    }


def make(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_from_config(config(**kwargs))


def images(batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 3, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1


BINARY = {"_target_": "vistok.tokenizers.quantizers.binary.BinaryQuantizer", "dim": D}
VARIANTS = {
    "binary4": {"quantizer": {**BINARY, "bits": 4}},
    "binary16": {"quantizer": {**BINARY, "bits": 16}},
    "binary40_3ids": {"quantizer": {**BINARY, "bits": 40, "index_bits": 16}},
    "rope_resample": {"rope_axes": [4, 6, 6], "resample": 1},
    "lfq": {"quantizer": {"_target_": "vistok.tokenizers.quantizers.lfq.LookupFreeQuantizer", "dim": D,
                          "codebook_size": 64}},
    "bsq": {"quantizer": {"_target_": "vistok.tokenizers.quantizers.lfq.LookupFreeQuantizer", "dim": D,
                          "codebook_size": 64, "spherical": True}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_contract_shapes_and_eval_lookup(variant):
    tok = make(**VARIANTS[variant])
    recon, out = tok(images())
    assert isinstance(out, TokenizerOutput) and recon.shape == images().shape
    streams = len(tok.codebook_sizes)
    assert out.indices.shape == (4, N, streams) and out.indices.dtype == torch.int64
    assert out.embeddings.shape == (4, N, D) and out.mask is None and tok.num_tokens == N
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < tok.codebook_size
    tok.eval()
    with torch.no_grad():
        out = tok.encode(images())
        assert torch.equal(tok.lookup(out.indices), out.embeddings)  # exact: bits x C both ways
        assert torch.equal(tok.decode(tok.lookup(out.indices)), tok.decode(out.embeddings))
        bits = tok.token_bits(out.indices)
        assert bits.shape == (4, N, tok.bits_per_token)


def test_bits_are_exactly_zero_or_one_in_eval_and_sampled_in_training():
    q = BinaryQuantizer(D, 8, tau=0.1)
    z = torch.randn(64, N, D)
    q.eval()
    with torch.no_grad():
        out = q(z)
        bits = q.unpack(out.indices)
        assert set(bits.unique().tolist()) <= {0, 1}
        assert torch.equal(bits, (q.to_logits(z) > 0).long())  # threshold at p = 0.5
        assert torch.equal(out.quantized, bits.float() @ q.codes)
        assert torch.equal(q(z).indices, out.indices)  # eval is deterministic
    q.train()
    with torch.no_grad():
        q.to_logits.weight.zero_()
        q.to_logits.bias.zero_()  # p = 0.5: training bits are fair coins
        sampled = q.unpack(q(z).indices).double()
    assert 0.4 < float(sampled.mean()) < 0.6


def test_code_penalty_is_p_one_minus_p():
    q = BinaryQuantizer(D, 8, tau=0.1)
    z = torch.randn(2, N, D, requires_grad=True)
    p = torch.sigmoid(q.to_logits(z))
    assert torch.allclose(q(z).losses["code"], (p * (1 - p)).mean())
    sharp = BinaryQuantizer(D, 8, tau=0.1, penalty_temperature=0.1)
    sharp.load_state_dict(q.state_dict())
    p_tau = torch.sigmoid(q.to_logits(z) / 0.1)
    assert torch.allclose(sharp(z).losses["code"], (p_tau * (1 - p_tau)).mean())


def test_gradients_reach_the_encoder_and_every_parameter():
    tok = make(rope_axes=[4, 6, 6], resample=1)
    recon, out = tok(images())
    ((recon - images()).abs().mean() + sum(out.losses.values())).backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    tok.zero_grad()
    tok.encode(images()).embeddings.sum().backward()  # what an LLM reads back-propagates (straight-through)
    assert tok.encoder.patch_embed.weight.grad.abs().sum() > 0


def test_frozen_quantizer_still_passes_gradient_to_a_trainable_encoder():
    tok = make()
    tok.quantizer.eval().requires_grad_(False)
    out = tok.encode(images())
    out.embeddings.sum().backward()
    assert tok.encoder.proj.weight.grad.abs().sum() > 0 and "quant/code" in out.losses


def test_pack_unpack_round_trip_matches_lfq_bit_order():
    bits = torch.randint(0, 2, (3, 5, 40))
    assert torch.equal(unpack_bits(pack_bits(bits, 16), 40, 16), bits)
    assert pack_bits(bits, 16).shape == (3, 5, 3)
    assert pack_bits(torch.tensor([[1, 0, 1]]), 8).item() == 5  # most significant bit first
    lfq = LookupFreeQuantizer(D, 64).eval()
    with torch.no_grad():
        out = lfq(torch.randn(2, N, D))
        signs = lfq.lookup(out.indices)  # back to D through project_out; compare in bit space instead
    assert signs.shape == (2, N, D)
    assert torch.equal(pack_bits(lfq.unpack(out.indices), 6)[..., 0], out.indices)


def test_decoder_ignores_masked_tokens():
    tok = make().eval()
    with torch.no_grad():
        emb = tok.encode(images(2)).embeddings
        mask = torch.ones(2, N, dtype=torch.bool)
        mask[:, N // 2:] = False
        other = emb.clone()
        other[:, N // 2:] = torch.randn_like(other[:, N // 2:])
        assert torch.allclose(tok.decode(emb, mask), tok.decode(other, mask), atol=1e-5)
        assert not torch.allclose(tok.decode(emb), tok.decode(other), atol=1e-3)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="num_tokens"):
        make().encode(images(), num_tokens=3)
    with pytest.raises(ValueError, match="even patch grid"):
        build_from_config({**config()["encoder"], "resolution": 12, "merge_after": 1})
    with pytest.raises(ValueError, match="rope_axes"):
        make(rope_axes=[4, 4, 4])
    with pytest.raises(ValueError, match="embed_dim"):
        build_from_config({**config(), "embed_dim": D + 1})


def test_export_then_load_gives_identical_indices(tmp_path):
    tok = make(rope_axes=[4, 6, 6], resample=1)
    tok.train()
    tok(images())
    tok.eval()
    path = save_tokenizer(tok, config(rope_axes=[4, 6, 6], resample=1), tmp_path / "tok", {"step": 1})
    loaded = load_tokenizer(path)
    with torch.no_grad():
        a, b = tok.encode(images()), loaded.encode(images())
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(tok.decode(a.embeddings), loaded.decode(b.embeddings))
        assert torch.equal(loaded.lookup(a.indices), b.embeddings)


def test_bit_entropy_values():
    assert bit_entropy(torch.tensor([0.5, 0.5])) == pytest.approx(1.0)
    assert bit_entropy(torch.tensor([0.0, 1.0])) == 0.0
    assert bit_entropy(torch.tensor([0.5, 1.0])) == pytest.approx(0.5)


def test_validation_reports_bit_metrics_and_the_train_eval_gap():
    tok = make().eval()
    acc = ValidationAccumulator(tok.codebook_size, tokenizer=tok)
    with torch.no_grad():
        recon, out = tok(images(8))
        acc.add_reconstruction(images(8), recon, out.indices)
    metrics = acc.compute()
    assert 0 <= metrics["bit_entropy"] <= 1 and 0 <= metrics["token_bit_entropy"] <= metrics["bit_entropy"] + 1e-9
    assert metrics["train_eval_psnr_gap"] == pytest.approx(metrics["psnr"] - metrics["psnr_train_mode"])
    assert not tok.quantizer.training  # sampling for the train-mode PSNR leaves eval mode behind
    plain = ValidationAccumulator(tok.codebook_size)
    plain.add_reconstruction(images(8), recon, out.indices)
    assert "bit_entropy" not in plain.compute()


def test_usage_window_matches_the_dense_histogram():
    window = UsageWindow(256, window=3)
    steps = [torch.randint(0, 40, (4, N, 1)) for _ in range(5)]
    for ids in steps:
        window.add(ids)
    dense = codebook_stats(sum(code_histogram(ids, 256) for ids in steps[-3:]))
    assert {k: float(v) for k, v in window.stats().items()} == pytest.approx(dense)
    assert int(window.histogram.sum()) == sum(ids.numel() for ids in steps[-3:])  # the leaving steps came off


def test_configs_compose(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["experiment=binary1d_mini"])
    tok = instantiate(cfg.tokenizer)
    assert tok.num_tokens == cfg.tokenizer.num_tokens and tok.bits_per_token == cfg.tokenizer.quantizer.bits
    for quantizer in ("lfq", "bsq"):
        cfg = compose_cfg(["experiment=binary1d_mini", f"tokenizer/quantizer={quantizer}"])
        assert instantiate(cfg.tokenizer).bits_per_token == 8
    paper = compose_cfg(["experiment=instella_paper"])
    assert paper.tokenizer.num_tokens == 128 and paper.tokenizer.quantizer.bits == 64
    assert paper.tokenizer.encoder.width == 768 and paper.tokenizer.decoder.width == 1024


def test_instella_paper_decoder_uses_the_3_axis_rope_of_the_released_code(compose_cfg):
    from hydra.utils import instantiate

    # The paper decoder at 2 blocks and 64 px: the positions are what is checked, not the size.
    paper = compose_cfg(["experiment=instella_paper", "data.resolution=64", "tokenizer.decoder.depth=2",
                         "tokenizer.decoder.split_after=1"])
    decoder = instantiate(paper.tokenizer.decoder)
    assert list(decoder.positions.rope_axes) == [8, 28, 28] == list(paper.tokenizer.encoder.rope_axes)
    assert decoder.token_pos is None and decoder.patch_pos is None  # rotary only: no learned positions


@pytest.mark.slow
def test_binary1d_mini_tiny_run(tmp_path, cache_dir):
    train_tiny(["experiment=binary1d_mini", "debug=tiny"], tmp_path / "run", cache_dir,
               ("psnr", "bit_entropy", "token_bit_entropy", "psnr_train_mode", "train_eval_psnr_gap"))


@pytest.mark.slow
def test_joint_ett_run_with_the_binary1d_family(tmp_path, cache_dir):
    """ETT stages (tokenizer -> align -> ett -> post) with a binary1d tokenizer and the tiny LLM."""
    run_dir = tmp_path / "run"
    tiny_llm = ["llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]
    binary = ["tokenizer=binary1d", "~tokenizer.quantizer.codebook_size"]  # ett_mini sizes a VQ codebook
    result = run_train(["experiment=ett_mini", *binary, "debug=tiny", *tiny_llm], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["tokenizer", "align", "ett", "post"]
    assert "caption_loss" in metrics["final"] and "bit_entropy" in metrics["final"]


def test_a_collapsed_token_position_shows_in_the_minimum_over_positions():
    from vistok.eval.metrics import BitMetrics

    tok = make().eval()
    metrics = BitMetrics(tok.num_tokens, tok.bits_per_token, stochastic=False)
    bits = torch.randint(0, 2, (64, tok.num_tokens, tok.bits_per_token))
    bits[:, 3] = 1  # position 3 never varies: it carries nothing about the image
    metrics.update(bits, eval_psnr=torch.zeros(64))
    result = metrics.compute()
    assert result["token_bit_entropy/min_position"] == 0.0
    assert result["token_bit_entropy"] > 0.8  # the mean over positions hides it
