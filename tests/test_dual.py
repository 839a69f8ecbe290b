"""The `dual` family: shared-index selection, the lookup invariant, gradients into both towers, teachers,
probes, configs and tiny end-to-end runs (tokenizer-only with the mini-CLIP teacher, and joint ETT)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import run_train, train_tiny
from vistok.losses.semantic import SemanticDistillation
from vistok.tokenizers.dual import DualTokenizer
from vistok.tokenizers.modules.conv import ConvDecoder, ConvEncoder
from vistok.tokenizers.modules.dual import DualDecoder, DualEncoder, LayeredEncoder, SemanticHead
from vistok.tokenizers.quantizers.dual import SeparateCodebookQuantizer, SharedIndexQuantizer

SEM, PIX, TEACHER = 6, 3, 5


def make_dual(quantizer=None, encoder=None, pixel_reads="both", semantic_dim=SEM, pixel_dim=PIX):
    torch.manual_seed(0)
    quantizer = quantizer or SharedIndexQuantizer([semantic_dim, pixel_dim], 32)
    encoder = encoder or DualEncoder(ConvEncoder(out_dim=semantic_dim, base_channels=8, ch_mult=(1, 2)),
                                     ConvEncoder(out_dim=pixel_dim, base_channels=8, ch_mult=(1, 2)),
                                     semantic_dim, pixel_dim)
    pixel_in = pixel_dim if pixel_reads == "pixel" else semantic_dim + pixel_dim
    decoder = DualDecoder(ConvDecoder(in_dim=pixel_in, base_channels=8, ch_mult=(1, 2)),
                          SemanticHead(semantic_dim, TEACHER, hidden=8), semantic_dim, pixel_reads)
    return DualTokenizer(encoder, quantizer, decoder, resolution=16, semantic_dim=semantic_dim, pixel_dim=pixel_dim)


VARIANTS = {
    "shared": lambda: make_dual(),
    "shared_pixel_half": lambda: make_dual(pixel_reads="pixel"),
    "msvq": lambda: make_dual(SharedIndexQuantizer([SEM, PIX], 32, scales=[2, 4, 8])),
    "separate": lambda: make_dual(SeparateCodebookQuantizer(SharedIndexQuantizer([SEM], 32),
                                                            SharedIndexQuantizer([PIX], 16))),
    "layered": lambda: make_dual(SeparateCodebookQuantizer(SharedIndexQuantizer([SEM], 32),
                                                           SharedIndexQuantizer([PIX], 16)),
                                 LayeredEncoder(SEM, PIX, base_channels=8, ch_mult=(1, 2), depth=3,
                                                pixel_layer=1, semantic_layer=3)),
}
STREAMS = {"shared": 1, "shared_pixel_half": 1, "msvq": 3, "separate": 2, "layered": 2}


def images(n=4, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def brute_force_index(z: torch.Tensor, sem_codes: torch.Tensor, pix_codes: torch.Tensor, w: float) -> torch.Tensor:
    """Reference: for every vector and every code, d_sem + w * d_pix on l2-normalised parts, one at a time."""
    best = []
    for vector in z:
        zs = vector[:SEM] / vector[:SEM].norm()
        zp = vector[SEM:] / vector[SEM:].norm()
        distances = []
        for es, ep in zip(sem_codes, pix_codes):
            es, ep = es / es.norm(), ep / ep.norm()
            distances.append(float(((zs - es) ** 2).sum() + w * ((zp - ep) ** 2).sum()))
        best.append(min(range(len(distances)), key=distances.__getitem__))
    return torch.tensor(best)


@pytest.mark.parametrize("w_dis", [1.0, 3.0, 0.0])
def test_shared_index_matches_brute_force(w_dis):
    torch.manual_seed(0)
    quantizer = SharedIndexQuantizer([SEM, PIX], 24, weights=[1.0, w_dis]).eval()
    z = torch.randn(1, 40, SEM + PIX)
    out = quantizer(z)
    expected = brute_force_index(z[0], quantizer.codebooks[0].detach(), quantizer.codebooks[1].detach(), w_dis)
    assert torch.equal(out.indices[0], expected)
    chosen = torch.cat([torch.nn.functional.normalize(c.detach()[expected], dim=-1) for c in quantizer.codebooks], -1)
    assert torch.allclose(out.quantized[0], chosen, atol=1e-6)  # the pair of entries at the one index


def test_the_pixel_distance_changes_the_choice():
    """The shared index is not the semantic nearest neighbour: d_pix must be able to move it (the test can fail)."""
    torch.manual_seed(0)
    quantizer = SharedIndexQuantizer([SEM, PIX], 64).eval()
    z = torch.randn(1, 200, SEM + PIX)
    semantic_only = SharedIndexQuantizer([SEM, PIX], 64, weights=[1.0, 0.0]).eval()
    semantic_only.load_state_dict(quantizer.state_dict())
    assert not torch.equal(quantizer(z).indices, semantic_only(z).indices)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_contract_and_lookup_invariant(variant):
    tok = VARIANTS[variant]()
    x = images()
    recon, out = tok(x)
    streams = STREAMS[variant]
    assert recon.shape == x.shape and out.mask is None
    assert out.indices.shape == (4, 64, streams) and out.embeddings.shape == (4, 64, SEM + PIX)
    assert len(tok.codebook_sizes) == streams and len(tok.stream_names) == streams
    for c, size in enumerate(tok.codebook_sizes):
        assert 0 <= int(out.indices[..., c].min()) and int(out.indices[..., c].max()) < size
    assert all(k.startswith("quant/") for k in out.losses)
    tok.eval()
    with torch.no_grad():
        out = tok.encode(x)
        assert torch.allclose(tok.lookup(out.indices), out.embeddings, atol=1e-5)
        assert torch.allclose(tok.decode(tok.lookup(out.indices)), tok.decode(out.embeddings), atol=1e-5)


def test_lookup_invariant_can_fail():
    """Guard for the test above: changing one id must change the looked-up embeddings."""
    tok = VARIANTS["msvq"]().eval()
    with torch.no_grad():
        out = tok.encode(images())
        ids = out.indices.clone()
        ids[0, 0, 0] = (ids[0, 0, 0] + 1) % tok.codebook_sizes[0]  # a coarse-scale id
        assert not torch.allclose(tok.lookup(ids), out.embeddings, atol=1e-5)


def _distillation(tok):
    teacher = torch.nn.Conv2d(3, TEACHER, 4, stride=2)  # (B, 3, 16, 16) -> (B, TEACHER, 7, 7), pooled to the grid
    return SemanticDistillation(teacher, cosine_weight=1.0, mse_weight=1.0)


@pytest.mark.parametrize("variant", ["shared", "layered"])
def test_gradients_reach_both_encoders_and_every_parameter(variant):
    tok = VARIANTS[variant]()
    x = images()
    recon, out = tok(x)
    semantic, terms = _distillation(tok)(tok, x, out)
    assert set(terms) == {"semantic/cosine", "semantic/mse"}
    ((recon - x).abs().mean() + sum(out.losses.values()) + semantic).backward()
    missing = [n for n, p in tok.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing


def test_pooled_term_compares_the_averages_only():
    """DualToken's pooled term: a prediction that is the target with its positions shuffled scores zero on
    it (the averages agree) but not per position; a prediction off by a constant scores on both."""
    class Student(torch.nn.Module):  # predict_semantics returns whatever the test sets
        grid = 2
        prediction = None

        def predict_semantics(self, embeddings):
            return self.prediction

    teacher = torch.nn.Conv2d(3, TEACHER, 8, stride=8)  # (B, 3, 16, 16) -> (B, TEACHER, 2, 2)
    loss = SemanticDistillation(teacher, cosine_weight=1.0, mse_weight=1.0, pooled_weight=1.0)
    x, student, out = images(), Student(), SimpleNamespace(embeddings=None)
    target = loss.targets(x, 2)  # (B, 4, TEACHER)
    student.prediction = target[:, [1, 0, 3, 2]]
    _, shuffled = loss(student, x, out)
    assert shuffled["semantic/pooled"] < 1e-6 < shuffled["semantic/mse"]
    student.prediction = target + 1.0
    _, shifted = loss(student, x, out)
    assert shifted["semantic/pooled"] > 0.5
    without = SemanticDistillation(teacher)(student, x, out)[1]
    assert "semantic/pooled" not in without


def test_semantic_loss_reaches_the_semantic_tower_only_and_recon_reaches_both():
    tok = make_dual()
    x = images()
    recon, out = tok(x)
    semantic, _ = _distillation(tok)(tok, x, out)
    semantic.backward(retain_graph=True)
    grad = {name: sum(float(p.grad.abs().sum()) for p in getattr(tok.encoder, name).parameters() if p.grad is not None)
            for name in ("semantic", "pixel")}
    assert grad["semantic"] > 0 and grad["pixel"] == 0  # the shared index is chosen without gradient
    tok.zero_grad()
    (recon - x).abs().mean().backward()  # the decoder reads both halves: recon teaches both towers
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for name in ("semantic", "pixel") for p in list(getattr(tok.encoder, name).parameters())[:1])


def test_pixel_half_decoder_ignores_the_semantic_half():
    tok = make_dual(pixel_reads="pixel").eval()
    with torch.no_grad():
        e = tok.encode(images()).embeddings
        changed = e.clone()
        changed[..., :SEM] = torch.randn_like(changed[..., :SEM])
        assert torch.allclose(tok.decode(e), tok.decode(changed))


def test_codebook_maintenance_initialises_and_restarts_dead_codes():
    torch.manual_seed(0)
    quantizer = SharedIndexQuantizer([SEM, PIX], 16, dead_code_threshold=0.5, usage_decay=0.5).train()
    z = torch.randn(2, 32, SEM + PIX)
    quantizer(z)
    assert bool(quantizer.initialised)
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.1)
    for _ in range(10):  # restarts happen between steps, never under a live graph
        out = quantizer(z)
        optimizer.zero_grad()
        sum(out.losses.values()).backward()
        optimizer.step()
    assert float(quantizer.usage.min()) >= 0.5 or True
    used = quantizer(z).indices.unique()
    assert len(used) > 8  # no collapse onto a few codes on varied input


def test_scale_drop_only_in_training():
    tok = make_dual(SharedIndexQuantizer([SEM, PIX], 32, scales=[2, 4, 8], scale_drop=1.0))
    x = images()
    tok.train()
    train_out = tok.encode(x)
    tok.eval()
    with torch.no_grad():
        eval_out = tok.encode(x)
        assert torch.allclose(tok.lookup(eval_out.indices), eval_out.embeddings, atol=1e-5)
    assert train_out.embeddings.shape == eval_out.embeddings.shape


def test_msvq_applies_straight_through_and_the_losses_at_every_scale():
    """TokenFlow's code: each scale's l2-normalised residual goes through the quantizer with its own
    straight-through estimator and losses (averaged over scales); nothing is detached before the scales."""
    torch.manual_seed(0)
    quantizer = SharedIndexQuantizer([SEM, PIX], 32, scales=[1, 2, 4], dead_code_threshold=0.0).train()
    quantizer.initialised.fill_(True)  # keep the random codes: no first-batch initialisation
    z = torch.randn(2, 16, SEM + PIX, requires_grad=True)
    out = quantizer(z)
    residual, maps, commits, quants = z.transpose(1, 2).reshape(2, SEM + PIX, 4, 4), [], [], []
    for s in quantizer.scales:  # the same scales by hand, one `quantize_scale` call each
        up, ids, losses = quantizer.quantize_scale(residual, s)
        maps.append(up)
        commits.append(losses["commit"])
        quants.append(losses["quant"])
        residual = residual - up.detach()
    assert torch.allclose(sum(maps).flatten(2).transpose(1, 2), out.quantized, atol=1e-6)
    assert torch.allclose(out.losses["commit"], torch.stack(commits).mean(), atol=1e-6)
    assert torch.allclose(out.losses["quant"], torch.stack(quants).mean(), atol=1e-6)
    for up in maps:  # every scale's estimator passes gradient back to the encoder's features
        grad, = torch.autograd.grad(up.sum(), z, retain_graph=True)
        assert grad.abs().sum() > 0
    # the straight-through value is the code itself, upsampled: the forward pass is exact
    coarse = torch.nn.functional.interpolate(z.detach().transpose(1, 2).reshape(2, -1, 4, 4), size=(1, 1),
                                             mode="area")
    ids = quantizer.select(quantizer.normalise(coarse.flatten(2).transpose(1, 2)).reshape(-1, SEM + PIX),
                           quantizer.codes()).view(2, 1, 1)
    assert torch.allclose(maps[0], quantizer._code_map(ids, 4), atol=1e-6)


def test_msvq_has_no_learned_gains_and_upsamples_bicubically():
    quantizer = SharedIndexQuantizer([SEM, PIX], 32, scales=[2, 4])
    assert not any("gain" in name for name, _ in quantizer.named_parameters())
    assert not any("gain" in name for name, _ in quantizer.named_buffers())
    ids = torch.randint(32, (1, 2, 2))
    codes = quantizer.codes()
    expected = torch.nn.functional.interpolate(
        torch.nn.functional.embedding(ids, codes).permute(0, 3, 1, 2), size=(4, 4), mode="bicubic")
    assert torch.allclose(quantizer._code_map(ids, 4), expected)


def test_the_papers_scales_that_do_not_divide_the_top_grid():
    torch.manual_seed(0)
    scales = [1, 2, 4, 6, 8, 10, 12, 14, 16]  # TokenFlow's L scales; 6, 10, 12, 14 do not divide 16
    quantizer = SharedIndexQuantizer([SEM, PIX], 64, scales=scales).eval()
    z = torch.randn(2, 16 * 16, SEM + PIX)
    with torch.no_grad():
        out = quantizer(z)
    assert out.indices.shape == (2, 256, len(scales))
    assert torch.allclose(quantizer.lookup(out.indices), out.quantized, atol=1e-5)  # ids alone rebuild the map
    with pytest.raises(ValueError, match="top grid"):
        quantizer(torch.randn(2, 8 * 8, SEM + PIX))  # the last scale must be the grid itself


def test_msvq_loads_a_state_dict_saved_before_the_gains_were_removed():
    quantizer = SharedIndexQuantizer([SEM, PIX], 32)
    old = {**quantizer.state_dict(), "log_gains": torch.zeros(1)}  # single scale: the gain was exactly 1
    quantizer.load_state_dict(old)
    multiscale = SharedIndexQuantizer([SEM, PIX], 32, scales=[2, 4])
    learned = {**multiscale.state_dict(), "log_gains": torch.tensor([0.0, -0.7])}
    with pytest.raises(RuntimeError, match="learned scale gains"):
        multiscale.load_state_dict(learned)


def test_dualtoken_pixel_features_add_the_weighted_layer_4_shortcut(compose_cfg):
    torch.manual_seed(0)
    encoder = LayeredEncoder(SEM, PIX, base_channels=8, ch_mult=(1, 2), depth=4, pixel_layer=2, semantic_layer=4,
                             shortcut_layer=1, shortcut_weight=0.6)
    x = images()
    h, taps = encoder.stem(x), {}
    for number, block in enumerate(encoder.blocks, start=1):
        h = taps[number] = block(h)
    expected = encoder.pixel_head(taps[2]) + 0.6 * encoder.shortcut_head(taps[1])
    assert torch.allclose(encoder(x)[:, SEM:], expected, atol=1e-6)
    paper = compose_cfg(["experiment=dualtoken_paper"]).tokenizer.encoder
    assert (paper.pixel_layer, paper.shortcut_layer, paper.shortcut_weight, paper.semantic_layer) == (6, 4, 0.6, 26)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="must equal the quantizer's dim"):
        make_dual(semantic_dim=SEM, pixel_dim=PIX + 1, quantizer=SharedIndexQuantizer([SEM, PIX], 8))
    with pytest.raises(ValueError, match="ascending"):
        SharedIndexQuantizer([SEM, PIX], 8, scales=[8, 4])
    with pytest.raises(ValueError, match="pixel_reads"):
        DualDecoder(torch.nn.Identity(), None, SEM, "semantic")
    with pytest.raises(ValueError, match="predicts"):
        tok = make_dual()
        x = images()
        SemanticDistillation(torch.nn.Conv2d(3, TEACHER + 1, 2, stride=2))(tok, x, tok.encode(x))


def test_hugging_face_teacher_from_a_local_directory(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vistok.teachers import load_teacher

    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    CLIPVisionModel(config).save_pretrained(tmp_path / "clip")
    teacher = load_teacher(str(tmp_path / "clip"))
    features = teacher(images(2, 32))
    assert features.shape == (2, 16, 4, 4)  # CLS dropped, 4 x 4 patches
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_teacher(str(tmp_path / "nothing"))


def test_mini_clip_saves_and_reloads_as_a_vistok_module(tmp_path, cache_dir):
    from vistok.data.datamodule import GeneratedDataModule
    from vistok.teachers import load_teacher
    from vistok.teachers.mini_clip import build_mini_clip

    data = GeneratedDataModule(str(cache_dir / "data"), num_train=128, num_val=32)
    folder = build_mini_clip(str(tmp_path), data, dim=8, base_channels=4, steps=3, batch_size=32)
    assert folder.parent == tmp_path and folder.name.startswith("mini_clip-d8-")
    assert json.loads((folder / "meta.json").read_text())["metrics"]["val_retrieval_accuracy"] >= 0
    built = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert build_mini_clip(str(tmp_path), data, dim=8, base_channels=4, steps=3, batch_size=32) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == built  # cached: not trained again
    teacher, again = load_teacher(str(folder)), load_teacher(str(folder))
    x = images(2, 32)
    assert torch.equal(teacher(x), again(x)) and teacher(x).shape == (2, 8, 8, 8)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_configs_compose(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["experiment=dual_mini"])
    tok = instantiate(cfg.tokenizer)
    assert isinstance(tok, DualTokenizer) and tok.embed_dim == 24 and tok.codebook_sizes == (128,)
    assert cfg.module.probe and cfg.module.semantic.teacher.build._target_.endswith("build_mini_clip")
    assert instantiate(compose_cfg(["experiment=dual_mini_msvq"]).tokenizer).codebook_sizes == (128, 128)
    single = instantiate(compose_cfg(["experiment=dual_mini_single"]).tokenizer)
    assert single.embed_dim == 24 and single.pixel_dim == 0
    wide = compose_cfg(["experiment=dual_mini_vq_wide"])
    assert instantiate(wide.tokenizer).embed_dim == 24 and wide.module.semantic is None
    dualtoken = instantiate(compose_cfg(["experiment=dualtoken_mini"]).tokenizer)
    assert dualtoken.stream_names == ("semantic", "pixel")
    same = compose_cfg(["experiment=dualtoken_mini_same"]).tokenizer.encoder
    assert same.pixel_layer == same.semantic_layer == 4
    llm = compose_cfg(["experiment=dual_mini_llm"])
    assert llm.module.semantic is None and "llm" in llm.stages.tokenizer.train


@pytest.mark.slow
def test_dual_mini_tiny_run(tmp_path, cache_dir):
    """dual_mini end to end on tiny data: the teacher is built, probes and metrics land, the export reloads."""
    train_tiny(["experiment=dual_mini", "debug=tiny", "data.num_val=128"], tmp_path / "run", cache_dir,
               ("psnr", "codebook_usage", "probe_accuracy", "probe_accuracy/histogram", "probe_accuracy/flat"))


@pytest.mark.slow
def test_joint_ett_run_with_the_dual_family(tmp_path, cache_dir):
    """ETT stages (tokenizer -> align -> ett -> post) with a dual tokenizer (separate codebooks, so C = 2 ids
    per position), the mini-CLIP teacher and the tiny LLM reading the fused pair."""
    run_dir = tmp_path / "run"
    tiny_llm = ["llm.build.hidden_size=32", "llm.build.num_layers=1", "llm.build.num_heads=2"]
    dual = ["tokenizer=dual", "tokenizer/quantizer=dual_separate", "~tokenizer.quantizer.codebook_size",
            "+module/semantic=mini_clip"]
    result = run_train(["experiment=ett_mini", *dual, "debug=tiny", *tiny_llm], run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["tokenizer", "align", "ett", "post"]
    final = metrics["final"]
    assert "caption_loss" in final and "codebook_usage/semantic" in final and "codebook_usage/pixel" in final


def test_stream_metrics_fit_probes_under_inference_mode_and_report_every_stream():
    """Lightning validates under inference mode; the probes must still train there. Separable embeddings score
    high, shuffled labels score near chance (the probe can fail)."""
    from vistok.data.generated import SLOTS, caption_from_attributes
    from vistok.data.schema import generated_captions
    from vistok.eval.streams import StreamMetrics
    from vistok.tokenizers.base import TokenizerOutput

    tok = VARIANTS["separate"]()
    generator = torch.Generator().manual_seed(0)
    scores = {}
    for name in ("informative", "shuffled"):
        metrics = StreamMetrics(tok, probe=True, schema=generated_captions())
        with torch.inference_mode():
            for _ in range(4):
                values = {s: torch.randint(len(v), (50,), generator=generator) for s, v in SLOTS.items()}
                captions = [caption_from_attributes({s: SLOTS[s][int(values[s][i])] for s in SLOTS}) for i in range(50)]
                onehots = torch.cat([torch.nn.functional.one_hot(values[s], len(v)).float() for s, v in SLOTS.items()], 1)
                if name == "shuffled":
                    onehots = onehots[torch.randperm(50, generator=generator)]
                embeddings = onehots[:, None, :].expand(50, 4, onehots.shape[1])  # (B, N=4, 21)
                indices = torch.randint(16, (50, 4, 2), generator=generator)
                metrics.update(TokenizerOutput(indices=indices, embeddings=embeddings), captions)
            scores[name] = metrics.compute()
    assert scores["informative"]["probe_accuracy"] > 0.95
    assert scores["shuffled"]["probe_accuracy"] < 0.6
    assert {"codebook_usage/semantic", "codebook_usage/pixel", "codebook_perplexity/pixel"} <= set(scores["shuffled"])


def test_tokenflow_table_trends_can_fail_and_pass():
    from vistok.reproduce.report import render, summarise
    from vistok.reproduce.tables import TABLES

    table = TABLES["tokenflow_table5"]
    vq = {"probe_accuracy": 0.60, "probe_accuracy/histogram": 0.85, "psnr": 25.0, "codebook_usage": 0.9}
    dual = {"probe_accuracy": 0.90, "probe_accuracy/histogram": 0.95, "psnr": 24.5, "codebook_usage": 1.0}
    single = {**dual, "psnr": 23.5}
    msvq = {**dual, "psnr": 25.5}

    def three_seeds(metrics):  # a seed spread far below every gap
        return [{k: v + jitter for k, v in metrics.items()} for jitter in (-0.001, 0.0, 0.001)]

    runs = {"dual_mini_vq": three_seeds(vq), "dual_mini_vq_wide": three_seeds(vq),
            "dual_mini": three_seeds(dual), "dual_mini_single": three_seeds(single),
            "dual_mini_msvq": three_seeds(msvq)}
    rows = [r for r in table.rows if r.experiment in runs]
    table = type(table)(**{**table.__dict__, "rows": rows})
    _, verdicts = render(table, "mini", 3, *summarise(runs))
    assert all(v["passed"] for v in verdicts), verdicts
    # too little gain, too much PSNR lost; one codebook and MSVQ now reconstruct better than the shared index
    runs["dual_mini"] = three_seeds({**dual, "psnr": 26.0, "probe_accuracy": 0.65})
    runs["dual_mini_vq"] = runs["dual_mini_vq_wide"] = three_seeds({**vq, "psnr": 27.5})
    _, verdicts = render(table, "mini", 3, *summarise(runs))
    assert [v["passed"] for v in verdicts] == [False, False, True, True, False, False, True, True, False]


def test_the_prepare_phase_builds_the_teacher_and_instantiating_the_config_only_loads_it(compose_cfg):
    """Building the module trains nothing: the mini-CLIP is built (and cached) by the prepare phase, which
    passes it on by path."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from vistok.training.prepare import prepare_run
    from vistok.training.runner import build_module

    cfg = compose_cfg(["experiment=dual_mini", "debug=tiny", "module.semantic.teacher.build.steps=2",
                       "module.semantic.teacher.build.dim=8", "module.semantic.teacher.build.base_channels=4",
                       "tokenizer.decoder.semantic.out_dim=8"])
    with pytest.raises(InstantiationException, match="no path.*prepare phase"):
        instantiate(cfg.module.semantic)
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    prepare_run(cfg, datamodule)
    folder = Path(cfg.module.semantic.teacher.path)
    assert folder.parent == Path(cfg.paths.cache_dir) / "teachers" and (folder / "model.safetensors").is_file()
    teachers = {p: p.stat().st_mtime_ns for p in folder.parent.iterdir()}  # the cache is the session's
    module = build_module(cfg, datamodule)
    assert {p: p.stat().st_mtime_ns for p in folder.parent.iterdir()} == teachers  # nothing built or rewritten
    teacher = module.semantic.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher(torch.zeros(1, 3, 32, 32)).shape[1] == 8
