"""The `flex` family (FlexTok nested dropout, One-D-Piece tail truncation), psnr@k and TokenFLEX budgets."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import run_train
from vistok import load_tokenizer, save_tokenizer
from vistok.export import HUB_CONFIG_KEY, build_from_config
from vistok.losses.recon import TokenizerLoss
from vistok.models.connector import SwiGLUProjector
from vistok.tokenizers.flex import powers_of_two, prefix_mask, sample_keep
from vistok.training.budgets import TokenBudgetSampler
from vistok.training.evaluation import ValidationAccumulator
from vistok.training.prefix_eval import curve, decode_prefixes

D, N, RES = 16, 8, 16
KS = [1, 2, 4, 8]


DROPOUTS = {"nested": "vistok.tokenizers.flex.NestedDropout", "tail": "vistok.tokenizers.flex.TailDropout"}


def config(dropout: str = "nested", sampling: str = "pow2") -> dict:
    vit = {"resolution": RES, "patch_size": 4, "num_tokens": N, "width": 32, "depth": 1, "heads": 2}
    length_dropout = None
    if dropout == "nested":
        length_dropout = {"_target_": DROPOUTS[dropout], "dim": D, "sampling": sampling}
    elif dropout == "tail":
        length_dropout = {"_target_": DROPOUTS[dropout]}
    return {
        "_target_": "vistok.tokenizers.flex.FlexTokenizer", "num_tokens": N, "embed_dim": D,
        "dropout": length_dropout,
        "encoder": {"_target_": "vistok.tokenizers.modules.vit.LatentTokenEncoder", "out_dim": D, **vit},
        "quantizer": {"_target_": "vistok.tokenizers.quantizers.fsq.FiniteScalarQuantizer", "dim": D,
                      "levels": [5, 5, 5]},
        "decoder": {"_target_": "vistok.tokenizers.modules.vit.LatentTokenDecoder", "in_dim": D, **vit},
    }


def make(dropout: str = "nested", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    tok = build_from_config(config(dropout, **kwargs))
    if tok.mask_token is not None:  # a non-zero mask token, so "filled with it" is observable
        torch.nn.init.normal_(tok.mask_token)
    return tok


def images(batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 3, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_powers_of_two_and_prefix_mask():
    assert powers_of_two(32) == [1, 2, 4, 8, 16, 32] and powers_of_two(6) == [1, 2, 4, 6]
    mask = prefix_mask(torch.tensor([1, 3, 8]), 8)
    assert mask.tolist()[1] == [True] * 3 + [False] * 5 and mask.sum(1).tolist() == [1, 3, 8]


@pytest.mark.parametrize("dropout", ["nested", "tail", "none"])
def test_mask_and_decode_at_every_k(dropout):
    """encode(num_tokens=k) marks exactly the first k tokens; the tokens after k never change the image."""
    tok = make(dropout).eval()
    x = images()
    with torch.no_grad():
        full = tok.encode(x)
        assert full.mask is None and full.indices.shape == (4, N, 1) and full.embeddings.shape == (4, N, D)
        assert torch.equal(tok.lookup(full.indices), full.embeddings)
        noise = torch.randn_like(full.embeddings)
        for k in KS:
            out = tok.encode(x, num_tokens=k)
            if k == N:
                assert out.mask is None
                continue
            assert out.mask.shape == (4, N) and out.mask.dtype == torch.bool
            assert out.mask.sum(1).tolist() == [k] * 4 and out.mask[:, :k].all()
            recon = tok.decode(out.embeddings, out.mask)
            assert recon.shape == x.shape and torch.isfinite(recon).all()
            tail_changed = torch.where(out.mask[..., None], out.embeddings, noise)
            assert torch.allclose(tok.decode(tail_changed, out.mask), recon, atol=1e-5)
            # ...while the kept tokens do matter (the check above could not pass by ignoring all tokens)
            head_changed = torch.where(out.mask[..., None], noise, out.embeddings)
            assert not torch.allclose(tok.decode(head_changed, out.mask), recon, atol=1e-3)
        recons = decode_prefixes(tok, x, KS)
        assert torch.allclose(recons[N], tok.decode(full.embeddings), atol=1e-6)
        assert not torch.allclose(recons[1], recons[N], atol=1e-3)


def test_nested_fills_the_mask_token_and_tail_truncates():
    nested, tail = make("nested").eval(), make("tail").eval()
    x = images()
    with torch.no_grad():
        out = nested.encode(x, num_tokens=2)
        filled = torch.cat([out.embeddings[:, :2], nested.mask_token.expand(4, N - 2, D)], 1)
        assert torch.allclose(nested.decode(out.embeddings, out.mask), nested.decoder(filled), atol=1e-6)
        out = tail.encode(x, num_tokens=2)
        # truncation: the same as a decoder whose attention never sees the tail
        assert torch.allclose(tail.decode(out.embeddings, out.mask), tail.decoder(out.embeddings, out.mask))
    assert make("tail").mask_token is None and make("none").mask_token is None


def test_training_draws_per_sample_k_for_nested_and_one_length_per_batch_for_tail():
    torch.manual_seed(0)
    nested, tail, none = make("nested").train(), make("tail").train(), make("none").train()
    x = images(32)
    masks = [nested.encode(x).mask for _ in range(4)]
    kept = torch.cat([torch.full((32,), N) if m is None else m.sum(1) for m in masks])
    assert set(kept.tolist()) <= set(powers_of_two(N)) and len(set(kept.tolist())) > 2
    for _ in range(5):
        mask = tail.encode(x).mask
        if mask is not None:
            lengths = mask.sum(1)
            assert (lengths == lengths[0]).all() and 1 <= int(lengths[0]) < N
            assert torch.equal(mask, prefix_mask(lengths, N))  # a prefix, never a ragged pattern
    assert none.encode(x).mask is None


@pytest.mark.parametrize("full_prob", [0.0, 0.5])
@pytest.mark.parametrize("sampling", ["uniform", "pow2", "uniform_pow2"])
def test_keep_count_distribution(sampling, full_prob):
    n, draws = 32, 20000
    keep = sample_keep(draws, n, sampling, generator=torch.Generator().manual_seed(0), full_prob=full_prob)
    counts = torch.bincount(keep, minlength=n + 1)[1:].double() / draws  # P(k) for k = 1..n
    pows = torch.tensor(powers_of_two(n)) - 1
    uniform, pow2 = torch.full((n,), 1 / n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    pow2[pows] = 1 / len(pows)
    # uniform_pow2 (ml-flextok): k ~ U{1..n} rounded up to a power of two, so P(2^j) = 2^(j-1) / n for j >= 1
    rounded_up = torch.zeros(n, dtype=torch.float64)
    rounded_up[0] = 1 / n
    for j in range(1, len(pows)):
        rounded_up[2**j - 1] = 2 ** (j - 1) / n
    expected = {"uniform": uniform, "pow2": pow2, "uniform_pow2": rounded_up}[sampling]
    expected = (1 - full_prob) * expected  # full_prob of the samples keep all n on top of the mode's own draws
    expected[-1] += full_prob
    assert (counts - expected).abs().max() < 0.015
    assert int(keep.min()) >= 1 and int(keep.max()) <= n


def test_uniform_pow2_keeps_every_token_in_about_half_the_samples():
    keep = sample_keep(20000, 32, "uniform_pow2", generator=torch.Generator().manual_seed(0))
    assert set(keep.unique().tolist()) <= set(powers_of_two(32))
    assert abs(float((keep == 32).double().mean()) - 0.5) < 0.015  # k in 17..32 rounds up to 32
    assert abs(float((keep == 16).double().mean()) - 0.25) < 0.015
    capped = sample_keep(20000, 24, "uniform_pow2", generator=torch.Generator().manual_seed(0))
    assert int(capped.max()) == 24 and abs(float((capped == 24).double().mean()) - 8 / 24) < 0.015  # 17..24


def test_tail_full_prob_keeps_every_token_in_that_share_of_batches():
    """TailDropout(full_prob=p): one length per batch, U{1..N} with prob 1 - p, N otherwise; at p = 0 the
    random stream is One-D-Piece's alone (the same lengths as before the option existed)."""
    from vistok.tokenizers.flex import TailDropout

    n, draws = 32, 4000
    torch.manual_seed(0)
    lengths = torch.tensor([int(TailDropout(0.5).keep(3, n, torch.device("cpu")).unique()) for _ in range(draws)])
    assert abs(float((lengths == n).double().mean()) - (0.5 + 0.5 / n)) < 0.03
    assert abs(float((lengths == 1).double().mean()) - 0.5 / n) < 0.01
    torch.manual_seed(0)
    plain = [int(TailDropout().keep(1, n, torch.device("cpu"))) for _ in range(50)]
    torch.manual_seed(0)
    assert plain == [int(torch.randint(1, n + 1, ())) for _ in range(50)]
    with pytest.raises(ValueError, match="full_prob"):
        TailDropout(1.5)


def test_token_budget_sampler_distribution_and_determinism():
    sampler = TokenBudgetSampler([64, 144, 256], [0.2, 0.3, 0.5], seed=3)
    draws = torch.tensor([sampler.sample() for _ in range(6000)])
    freq = [float((draws == b).double().mean()) for b in (64, 144, 256)]
    assert freq == pytest.approx([0.2, 0.3, 0.5], abs=0.02)
    again = TokenBudgetSampler([64, 144, 256], [0.2, 0.3, 0.5], seed=3)
    assert [again.sample() for _ in range(50)] == draws[:50].tolist()
    state = torch.random.get_rng_state()
    TokenBudgetSampler([1, 2]).sample()
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    with pytest.raises(ValueError):
        TokenBudgetSampler([4, 16], [1.0])


def test_expected_budget_mode_trains_every_budget_with_its_probability_as_weight():
    from types import SimpleNamespace

    from vistok.training.module import VistokModule

    expected = TokenBudgetSampler([4, 16, 64], [2, 3, 5], seed=0, mode="expected")
    assert expected.batch_budgets() == [(4, pytest.approx(0.2)), (16, pytest.approx(0.3)), (64, pytest.approx(0.5))]
    drawn, again = TokenBudgetSampler([4, 16, 64], seed=1), TokenBudgetSampler([4, 16, 64], seed=1)
    assert [drawn.batch_budgets() for _ in range(20)] == [[(again.sample(), 1.0)] for _ in range(20)]
    with pytest.raises(ValueError, match="budget mode"):
        TokenBudgetSampler([4], mode="per_sample")
    # the module's caption loss: one LLM pass per budget, weighted (loss at budget n here: n)
    calls = []

    def caption_loss(out, captions, budget=None):
        calls.append(budget)
        return SimpleNamespace(loss=torch.tensor(float(budget or 1)))

    fake = SimpleNamespace(budgets=expected, model=SimpleNamespace(caption_loss=caption_loss))
    loss = VistokModule._caption_loss(fake, None, ["a"])
    assert calls == [4, 16, 64] and float(loss) == pytest.approx(0.2 * 4 + 0.3 * 16 + 0.5 * 64)
    fake.budgets = None
    VistokModule._caption_loss(fake, None, ["a"])
    assert calls[3:] == [None]  # no budgets: one pass reading every token


def test_swiglu_projector_pools_a_grid_to_each_budget():
    proj = SwiGLUProjector(D, 24)
    grid = torch.randn(2, 64, D)
    for n in (4, 16, 64):
        assert proj(grid, num_tokens=n).shape == (2, n, 24)
    # 2 x 2 pooling of an 8 x 8 grid averages 4 x 4 spatial blocks, not raster-order runs
    pooled = grid.view(2, 8, 8, D)[:, :4, :4].mean((1, 2))
    assert torch.allclose(proj(grid, num_tokens=4)[:, 0], proj(pooled[:, None])[:, 0], atol=1e-5)


def test_mask_token_gets_gradient():
    tok = make("nested").train()
    out = tok.encode(images(16), num_tokens=2)
    tok.decode(out.embeddings, out.mask).mean().backward()
    assert tok.mask_token.grad is not None and tok.mask_token.grad.abs().sum() > 0
    decoder_group = {id(p) for p in tok.training_groups()["decoder"].parameters()}
    assert id(tok.mask_token) in decoder_group  # trained and frozen with the decoder that reads it
    assert all(p is not tok.mask_token for p in tok.decoder.parameters())  # owned by the dropout, not the decoder


def test_log_l2_weighs_each_image_by_its_own_error():
    """l2_log: the objective is mean_b log MSE_b; the logged l2 stays the batch MSE."""
    images = torch.zeros(2, 3, 4, 4)
    recon = torch.stack([torch.full((3, 4, 4), 0.01), torch.full((3, 4, 4), 0.3)]).requires_grad_()
    total, terms = TokenizerLoss(l1_weight=0.0, l2_weight=1.0, l2_log=True)(images, recon, {})
    per_image = recon.detach().pow(2).flatten(1).mean(1)
    assert torch.allclose(total, torch.log(per_image + 1e-6).mean())
    assert torch.allclose(terms["l2"], per_image.mean())
    total.backward()
    # d log(MSE_b) / d recon_b = 2 e_b / (n MSE_b) = 2 / (n e_b) for a constant error e_b: the small error
    # pulls harder (30x, less the eps), where the plain MSE would give the large one 30 times the gradient.
    grad = recon.grad.flatten(1)[:, 0]
    assert grad[0] > grad[1] > 0 and torch.allclose(grad[0] / grad[1], torch.tensor(30.0), rtol=0.02)


def test_validation_reports_psnr_at_every_k():
    tok = make("nested").eval()
    acc = ValidationAccumulator(tok.codebook_size, tokenizer=tok)
    with torch.no_grad():
        recon, out = tok(images(8))
        acc.add_reconstruction(images(8), recon, out.indices)
    metrics = acc.compute()
    assert [k for k, _ in curve(metrics)] == KS
    assert metrics[f"psnr@{N}"] == pytest.approx(metrics["psnr"], abs=1e-4)
    assert {"psnr_mean_image", "bytes@full", "jpeg_bytes@q10", "jpeg_psnr@q10"} <= set(metrics)


@pytest.mark.parametrize("dropout", ["nested", "tail"])
def test_export_then_load_decodes_every_prefix_identically(tmp_path, dropout):
    tok = make(dropout).eval()
    loaded = load_tokenizer(save_tokenizer(tok, config(dropout), tmp_path / "tok", {"step": 1}))
    with torch.no_grad():
        for k in KS:
            a, b = tok.encode(images(), num_tokens=k), loaded.encode(images(), num_tokens=k)
            assert torch.equal(a.indices, b.indices)
            assert torch.equal(tok.decode(a.embeddings, a.mask), loaded.decode(b.embeddings, b.mask))


@pytest.mark.parametrize("dropout", ["nested", "tail", "none"])
def test_an_export_of_an_earlier_version_loads_and_decodes_identically(tmp_path, dropout):
    """Earlier exports named the dropout by string, its settings beside it, and kept the mask token on the
    decoder (`decoder.dropout_token`)."""
    from safetensors.torch import load_file, save_file

    tok = make(dropout).eval()
    folder = save_tokenizer(tok, config(dropout), tmp_path / "tok", {"step": 1})
    old = {**config(dropout), "dropout": dropout, "sampling": "pow2", "full_prob": 0.0}
    (folder / "config.yaml").write_text(yaml.safe_dump(old))
    (folder / "config.json").write_text(json.dumps({HUB_CONFIG_KEY: old}))
    state = load_file(folder / "model.safetensors")
    if dropout == "nested":
        state["decoder.dropout_token"] = state.pop("length_dropout.mask_token")
    save_file(state, folder / "model.safetensors")
    loaded = load_tokenizer(folder)
    assert type(loaded.length_dropout) is type(tok.length_dropout)
    with torch.no_grad():
        for k in KS:
            a, b = tok.encode(images(), num_tokens=k), loaded.encode(images(), num_tokens=k)
            assert torch.equal(tok.decode(a.embeddings, a.mask), loaded.decode(b.embeddings, b.mask))


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="dropout must be"):
        build_from_config({**config(), "dropout": "sometimes"})
    with pytest.raises(ValueError, match="mask token has width 8 but the tokens have 16"):
        build_from_config({**config(), "dropout": {"_target_": DROPOUTS["nested"], "dim": 8}})
    with pytest.raises(ValueError, match="sampling"):
        make(sampling="cubic")
    with pytest.raises(ValueError, match="full_prob"):
        sample_keep(4, N, "pow2", full_prob=1.5)
    with pytest.raises(ValueError, match="num_tokens"):
        make().encode(images(), num_tokens=N + 1)


@pytest.mark.slow
def test_flex_mini_tiny_run_writes_the_psnr_curve(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = run_train(["experiment=flex_mini", "debug=tiny"], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert [k for k, _ in curve(final)] == [1, 2, 4, 8, 16, 32]
    for picture in ("psnr_vs_k_tokenizer.png", "prefix_tokenizer.png", "recon_tokenizer.png"):
        assert (run_dir / "images" / picture).stat().st_size > 0


@pytest.mark.slow
def test_joint_ett_run_with_the_flex_family_and_stochastic_budgets(tmp_path, cache_dir):
    """ETT stages with a flex tokenizer; the LLM reads a random prefix budget per batch, scored at each."""
    run_dir = tmp_path / "run"
    tiny_llm = ["llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]
    result = run_train(["experiment=flex_ett_mini", "debug=tiny", *tiny_llm], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["tokenizer", "align", "ett", "post"]
    final = metrics["final"]
    for key in ("caption_loss", "psnr@1", "psnr@32", *(f"caption_token_accuracy@{n}" for n in (8, 16, 32))):
        assert key in final, key


def test_flow_decoder_trains_by_flow_matching_and_samples_with_euler_steps():
    cfg = config("nested")
    cfg["decoder"] = {"_target_": "vistok.tokenizers.modules.flow.FlowDecoder", "steps": 3, "sample": True,
                      "body": cfg["decoder"]}
    torch.manual_seed(0)
    tok = build_from_config(cfg).train()
    out = tok.encode(images(8))
    loss = out.losses["flow/velocity"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert tok.decoder.noisy_in.weight.grad.abs().sum() > 0 and tok.encoder.patch_embed.weight.grad.abs().sum() > 0
    tok.eval()
    with torch.no_grad():
        out = tok.encode(images(), num_tokens=2)
        a, b = tok.decode(out.embeddings, out.mask), tok.decode(out.embeddings, out.mask)
        assert a.shape == images().shape and torch.equal(a, b)  # seeded sampling: reproducible eval
        assert not torch.allclose(a, tok.decoder.body(*tok._decoder_inputs(out.embeddings, out.mask)))


def test_visual_inputs_take_a_prefix_of_ordered_tokens_and_pool_a_grid():
    """TokenFLEX budgets in the joint model: flex tokenizers give a prefix, 2-D grids are pooled."""
    from types import SimpleNamespace

    from vistok.models.visual_input import ProjectedEmbeddings

    proj = SwiGLUProjector(D, 24)
    emb = torch.randn(2, 64, D)
    out = SimpleNamespace(embeddings=emb, indices=torch.zeros(2, 64, 1, dtype=torch.long))
    flex = SimpleNamespace(projector=proj, tokenizer=SimpleNamespace(ordered=True))
    grid = SimpleNamespace(projector=proj, tokenizer=SimpleNamespace(ordered=False))
    adapter = ProjectedEmbeddings()
    assert torch.equal(adapter.from_output(flex, out, 16), proj(emb[:, :16]))
    assert torch.equal(adapter.from_output(grid, out, 16), proj(emb, num_tokens=16))
    assert adapter.from_output(grid, out, None).shape == (2, 64, 24)


def test_budget_misconfigurations_fail_at_construction():
    from types import SimpleNamespace

    from vistok.models.connector import MLPProjector
    from vistok.models.visual_input import CodeRows, ProjectedEmbeddings

    flex = SimpleNamespace(ordered=True, num_tokens=32)
    grid = SimpleNamespace(ordered=False, num_tokens=64)
    CodeRows().check_budgets(SimpleNamespace(tokenizer=flex, projector=None), [8, 32])
    ProjectedEmbeddings().check_budgets(SimpleNamespace(tokenizer=grid, projector=SwiGLUProjector(D, 8)), [4, 64])
    with pytest.raises(ValueError, match="exceed"):
        ProjectedEmbeddings().check_budgets(SimpleNamespace(tokenizer=flex, projector=MLPProjector(D, 8)), [64])
    with pytest.raises(ValueError, match="pooling projector"):
        ProjectedEmbeddings().check_budgets(SimpleNamespace(tokenizer=grid, projector=MLPProjector(D, 8)), [4])
    with pytest.raises(ValueError, match="llm_input"):
        CodeRows().check_budgets(SimpleNamespace(tokenizer=grid, projector=None), [4])


def test_onedpiece_paper_uses_the_papers_quantizer(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["experiment=onedpiece_paper"])
    quantizer = instantiate(cfg.tokenizer.quantizer)
    assert quantizer.codebook_size == 4096 and quantizer.dim == 12 == cfg.tokenizer.embed_dim
    vq = quantizer.vq
    assert vq.use_cosine_sim and not vq.rotation_trick  # l2-normalised, plain straight-through
    assert bool(vq._codebook.initted) and vq._codebook.threshold_ema_dead_code == 0  # no k-means, no restart
    assert cfg.loss.quantizer_weights.commit == 0.25


@pytest.mark.parametrize("causal", [True, False])
def test_causal_latents_keep_each_token_from_reading_the_tokens_after_it(causal):
    """ml-flextok packs [patches ; registers] with a prefix-LM mask: register j reads every patch and the
    registers up to j; patches read patches only."""
    from vistok.tokenizers.modules.vit import LatentTokenEncoder

    torch.manual_seed(0)
    encoder = LatentTokenEncoder(16, 4, num_tokens=4, width=16, depth=2, heads=2, out_dim=8, causal_latents=causal)
    out = encoder(torch.rand(2, 3, 16, 16))
    for j in range(4):
        grad, = torch.autograd.grad(out[:, j].sum(), encoder.latent_tokens, retain_graph=True)
        later = grad[0, j + 1:].abs().sum()
        assert (later == 0) if causal else (j == 3 or later > 0), (j, later)
        assert grad[0, j].abs().sum() > 0


def test_flextok_paper_registers_attend_causally(compose_cfg):
    cfg = compose_cfg(["experiment=flextok_paper"])
    assert cfg.tokenizer.encoder.causal_latents is True
    assert compose_cfg(["experiment=flex_mini"]).tokenizer.encoder.causal_latents is False  # measured so
