"""Tests for vistok.models: the tiny LLM builder, the caption LM wrapper and the projectors."""

from __future__ import annotations

import ast
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from vistok.models.connector import MLPProjector, SwiGLUProjector
from vistok.models.llm import MARKER_FILE, CaptionOutput, CausalLM, build_text_tokenizer, build_tiny_llm

CAPTIONS = [
    "a red cat sleeps on a mat",
    "two dogs run in the fog",
    "a blue car parked by the sea",
    "green trees under a grey sky",
]
TINY = dict(hidden_size=32, num_layers=1, num_heads=4, vocab_size=300, max_position_embeddings=64)


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> str:
    return build_tiny_llm(str(tmp_path_factory.mktemp("llm") / "tiny"), CAPTIONS * 4, **TINY)


@pytest.fixture
def lm(llm_dir) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(llm_dir)


def test_models_package_imports_no_training_stack():
    banned = ("lightning", "pytorch_lightning", "hydra", "wandb", "torch.distributed")
    root = Path(__file__).resolve().parents[1] / "vistok" / "models"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert not any(name == b or name.startswith(b + ".") for b in banned), (path, name)


def test_text_tokenizer_round_trips():
    tok = build_text_tokenizer(CAPTIONS, vocab_size=300)
    for text in CAPTIONS + ["unseen words: ümlaut & 42!"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3


def test_build_tiny_llm_saves_reloads_and_reuses(llm_dir, tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER_FILE):
        assert os.path.isfile(os.path.join(llm_dir, name)), name
    mtime = os.path.getmtime(os.path.join(llm_dir, "model.safetensors"))
    rng = torch.get_rng_state()
    assert build_tiny_llm(llm_dir, CAPTIONS * 4, **TINY) == llm_dir
    assert os.path.getmtime(os.path.join(llm_dir, "model.safetensors")) == mtime  # reused, not rebuilt
    assert torch.equal(torch.get_rng_state(), rng)
    assert not [p for p in os.listdir(os.path.dirname(llm_dir)) if p.startswith(".")]  # no temp dirs left

    lm = CausalLM(llm_dir)
    tok = lm.tokenizer
    assert lm.hidden_size == 32
    assert lm.model.config.eos_token_id == tok.eos_token_id
    assert lm.model.config.pad_token_id == tok.pad_token_id
    assert lm.model.config.bos_token_id == tok.bos_token_id
    assert tok.decode(tok(CAPTIONS[0], add_special_tokens=False)["input_ids"]) == CAPTIONS[0]

    # Same parameters, fresh dir: identical weights (seeded); different seed: rebuilt in place.
    other = build_tiny_llm(str(tmp_path / "again"), CAPTIONS * 4, **TINY)
    w = lm.model.get_input_embeddings().weight
    assert torch.equal(CausalLM(other).model.get_input_embeddings().weight, w)
    build_tiny_llm(other, CAPTIONS * 4, **{**TINY, "seed": 1})
    assert not torch.equal(CausalLM(other).model.get_input_embeddings().weight, w)


def test_build_tiny_llm_refuses_foreign_dir(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_llm(str(tmp_path / "x"), CAPTIONS, **TINY)
    assert (tmp_path / "x" / "precious.txt").read_text() == "keep me"


def test_missing_path_raises_clear_error(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        CausalLM(missing)


def test_tokenize_captions_appends_eos_and_pads(lm):
    ids, attn = lm.tokenize_captions(["a cat", CAPTIONS[2]], max_length=32)
    eos, pad = lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
    assert ids.dtype == torch.long and attn.dtype == torch.bool and ids.shape == attn.shape
    lengths = attn.sum(1)
    for row, n in zip(ids, lengths.tolist()):
        assert row[n - 1] == eos and (row[n:] == pad).all()
        assert lm.tokenizer.bos_token_id not in row.tolist()
    assert lm.tokenizer.decode(ids[1, : lengths[1] - 1]) == CAPTIONS[2]
    short, short_attn = lm.tokenize_captions([CAPTIONS[2]], max_length=3)
    assert short.shape == (1, 3) and short_attn.all() and short[0, -1] == eos


def test_labels_masking_and_loss(lm):
    b, n = 2, 5
    visual = torch.randn(b, n, lm.hidden_size)
    ids, attn = lm.tokenize_captions(["a cat", CAPTIONS[0]], max_length=32)
    out = lm(visual, ids, attn)
    assert isinstance(out, CaptionOutput)
    t = ids.shape[1]
    assert out.logits.shape == (b, n + t, len(lm.tokenizer))
    assert out.labels.shape == (b, n + t)
    assert (out.labels[:, :n] == -100).all()
    assert (out.labels[:, n:][~attn] == -100).all()
    assert torch.equal(out.labels[:, n:][attn], ids[attn])

    # Manual CE: position N-1+j predicts caption token j, over real caption tokens only.
    logits = out.logits[:, n - 1 : -1]
    manual = F.cross_entropy(logits[attn].float(), ids[attn])
    assert torch.allclose(out.loss, manual, atol=1e-5)

    correct, total = lm.token_accuracy(out)
    assert total == attn.sum()
    assert correct == (logits.argmax(-1)[attn] == ids[attn]).sum()


def test_gradient_reaches_visual(lm):
    visual = torch.randn(2, 4, lm.hidden_size, requires_grad=True)
    ids, attn = lm.tokenize_captions(CAPTIONS[:2], max_length=16)
    lm(visual, ids, attn).loss.backward()
    assert visual.grad is not None and visual.grad.abs().sum() > 0
    assert visual.grad[:, -1].abs().sum() > 0  # the last visual position predicts the first token


def test_gradient_checkpointing_still_trains(llm_dir):
    lm = CausalLM(llm_dir, gradient_checkpointing=True)
    lm.train()
    visual = torch.randn(2, 4, lm.hidden_size, requires_grad=True)
    ids, attn = lm.tokenize_captions(CAPTIONS[:2], max_length=16)
    lm(visual, ids, attn).loss.backward()
    assert visual.grad.abs().sum() > 0


def test_generate_matches_manual_greedy_and_restores_mode(lm):
    visual = torch.randn(3, 6, lm.hidden_size)
    lm.train()
    ids = lm.generate_ids(visual, max_new_tokens=4)
    assert lm.training and lm.model.training
    # v5 returns only new tokens for inputs_embeds-only calls (N=6 > 4 proves nothing was prepended).
    assert ids.shape[0] == 3 and ids.shape[1] <= 4

    lm.eval()
    embeds, manual = visual, []
    with torch.no_grad():
        for _ in range(ids.shape[1]):
            nxt = lm.model(inputs_embeds=embeds).logits[:, -1].argmax(-1)
            manual.append(nxt)
            embeds = torch.cat([embeds, lm.embed_text(nxt[:, None])], dim=1)
    manual = torch.stack(manual, 1)
    eos = lm.tokenizer.eos_token_id
    for row, ref in zip(ids.tolist(), manual.tolist()):
        stop = ref.index(eos) + 1 if eos in ref else len(ref)
        assert row[:stop] == ref[:stop]

    captions = lm.generate_captions(visual, max_new_tokens=4)
    assert isinstance(captions, list) and len(captions) == 3 and all(isinstance(c, str) for c in captions)


def test_overfit_then_generate_reproduces_captions(lm):
    torch.manual_seed(0)
    visual = torch.randn(4, 4, lm.hidden_size)
    ids, attn = lm.tokenize_captions(CAPTIONS, max_length=32)
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    lm.train()
    for _ in range(100):
        loss = lm(visual, ids, attn).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    correct, total = lm.token_accuracy(lm(visual, ids, attn))
    assert correct.item() / total.item() > 0.9
    generated = lm.generate_captions(visual, max_new_tokens=24)
    assert sum(g == c for g, c in zip(generated, CAPTIONS)) >= 3, generated


def test_visual_vocab(lm):
    old = lm.model.get_input_embeddings().num_embeddings
    offset = lm.add_visual_vocab(16)
    assert offset == old
    assert lm.model.get_input_embeddings().num_embeddings == old + 16
    indices = torch.tensor([[0, 3, 15], [1, 1, 2]])
    emb = lm.embed_visual_ids(indices)
    assert emb.shape == (2, 3, lm.hidden_size)
    assert torch.equal(emb, lm.model.get_input_embeddings().weight[offset + indices])

    ids, attn = lm.tokenize_captions(CAPTIONS[:2], max_length=16)
    out = lm(emb, ids, attn)
    assert out.logits.shape[-1] == old + 16
    out.loss.backward()
    grad = lm.model.get_input_embeddings().weight.grad
    used = torch.zeros(16, dtype=torch.bool)
    used[indices.flatten()] = True
    assert (grad[offset:][used].abs().sum(-1) > 0).all()
    assert (grad[offset:][~used] == 0).all()

    # Generation never emits visual-code ids.
    gen = lm.generate_ids(emb.detach(), max_new_tokens=6)
    assert (gen < offset).all()
    with pytest.raises(RuntimeError):
        lm.add_visual_vocab(4)


def test_mlp_projector_shapes():
    x = torch.randn(2, 10, 8)
    assert MLPProjector(8, 32)(x).shape == (2, 10, 32)
    assert MLPProjector(8, 32, hidden_dim=64, depth=3)(x).shape == (2, 10, 32)
    assert MLPProjector(8, 32, depth=1)(x).shape == (2, 10, 32)


def test_swiglu_projector_pooling():
    x = torch.randn(2, 64, 8)
    assert SwiGLUProjector(8, 32)(x).shape == (2, 64, 32)
    proj = SwiGLUProjector(8, 32, pool_tokens=16)
    assert proj(x).shape == (2, 16, 32)
    # 2-D pooling: output token 0 averages the top-left 2x2 block of the 8x8 grid.
    from vistok.models.connector import pool_tokens

    grid = x.view(2, 8, 8, 8)
    expected = grid[:, :2, :2].mean(dim=(1, 2))
    assert torch.allclose(pool_tokens(x, 16)[:, 0], expected, atol=1e-6)
    # Non-square N falls back to 1-D pooling.
    assert SwiGLUProjector(8, 32, pool_tokens=5)(torch.randn(2, 10, 8)).shape == (2, 5, 32)
    with pytest.raises(ValueError):
        pool_tokens(x, 100)


# ---- the unified model ---------------------------------------------------------------------------------------


def _unified(llm_dir: str, adapter_name: str, generation: bool = True):
    from vistok.models.unified import UnifiedModel
    from vistok.models.visual_input import adapter_from_config
    from vistok.tokenizers.modules.conv import ConvDecoder, ConvEncoder
    from vistok.tokenizers.quantizers.vq import VectorQuantizer
    from vistok.tokenizers.vq import VQTokenizer

    torch.manual_seed(0)
    tokenizer = VQTokenizer(ConvEncoder(out_dim=8, base_channels=8), VectorQuantizer(dim=8, codebook_size=16),
                            ConvDecoder(in_dim=8, base_channels=8))
    llm = CausalLM(llm_dir)
    adapter = adapter_from_config(adapter_name)
    projector = MLPProjector(8, llm.hidden_size) if adapter.needs_projector else None
    return UnifiedModel(tokenizer, llm, projector, adapter, generation=generation).eval()


@pytest.mark.parametrize("adapter", ["embeddings", "indices"])
def test_generation_feeds_written_ids_back_exactly_as_training_read_them(llm_dir, adapter):
    """Both adapters: the LLM inputs of the ids the tokenizer emitted (`visual_embeddings`, what generation feeds
    back) equal those of the tokenizer output (`visual_inputs`, what training reads), and both losses run."""
    model = _unified(llm_dir, adapter)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model.tokenizer.encode(images)
    assert torch.allclose(model.visual_embeddings(out.indices), model.visual_inputs(out), atol=1e-6)
    assert model.visual_inputs(out).shape == (2, model.tokenizer.num_tokens, model.llm.hidden_size)
    assert torch.isfinite(model.caption_loss(out, ["a red cat", "two dogs"]).loss)
    generation = model.generation_loss(out, ["a red cat", "two dogs"])
    assert torch.isfinite(generation.loss) and int(generation.count) == 2 * model.tokenizer.num_tokens
    if adapter == "indices":  # the codes became new rows of the LLM's table; no projector
        assert model.projector is None and model.llm.visual_offset is not None


def test_the_adapter_comes_from_its_exact_class_name_only():
    from vistok.models.visual_input import CodeRows, ProjectedEmbeddings, adapter_from_config

    assert isinstance(adapter_from_config({"_target_": "vistok.models.visual_input.CodeRows"}), CodeRows)
    assert isinstance(adapter_from_config({"_target_": "vistok.models.visual_input.ProjectedEmbeddings"}),
                      ProjectedEmbeddings)
    assert isinstance(adapter_from_config("indices"), CodeRows)  # how checkpoints of earlier versions name it
    for foreign in ({"_target_": "os.system", "command": "touch /tmp/pwned"},
                    {"_target_": "vistok.models.visual_input.CodeRowsEvil"}, "embeddings; rm -rf /"):
        with pytest.raises(ValueError, match="unknown visual-input adapter"):
            adapter_from_config(foreign)


def test_a_projector_with_code_rows_or_none_with_embeddings_is_refused(llm_dir):
    from vistok.models.unified import UnifiedModel
    from vistok.models.visual_input import CodeRows, ProjectedEmbeddings

    tokenizer = _unified(llm_dir, "embeddings").tokenizer
    with pytest.raises(ValueError, match="projector"):
        UnifiedModel(tokenizer, CausalLM(llm_dir), None, ProjectedEmbeddings())
    with pytest.raises(ValueError, match="projector=null"):
        UnifiedModel(tokenizer, CausalLM(llm_dir), MLPProjector(8, 32), CodeRows())


def test_model_weights_read_both_checkpoint_layouts(llm_dir):
    from vistok.models.unified import model_weights

    own = _unified(llm_dir, "embeddings").state_dict()
    current = {f"model.{k}": v for k, v in own.items()} | {"discriminator.w": torch.zeros(1)}
    earlier = dict(own) | {"discriminator.w": torch.zeros(1)}
    for layout in (current, earlier):
        weights = model_weights(layout)
        assert weights.keys() == own.keys() and all(torch.equal(weights[k], own[k]) for k in own)
