"""The tokenizer contract (DESIGN.md), checked on every tokenizer config the project ships.

For each `configs/tokenizer/*.yaml` (and each quantizer option of the 2-D VQ family), built the way its
experiment builds it: encode/decode shapes, ids in range, the optional features every tokenizer declares
(`ordered`, `bits_per_token`, `stream_names`), lookup(indices) == embeddings in eval, and an export round trip
that gives the same ids and pixels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vistok import load_tokenizer, save_tokenizer
from vistok.reproduce.paper_shapes import PAPER_SHAPES
from vistok.tokenizers.base import Tokenizer, TokenizerOutput

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# tokenizer preset -> the experiment that builds it (paper presets with their depth cut: shapes stay the paper's)
PRESETS = {"vq": "vq_mini", "dual": "dual_mini", "binary1d": "binary1d_mini", "flex": "flex_mini",
           "instella": "instella_paper", "tokenflow": "tokenflow_paper"}
CASES = {**{name: [f"experiment={exp}", *(PAPER_SHAPES[exp].depth if exp in PAPER_SHAPES else ())]
            for name, exp in PRESETS.items()},
         **{f"vq+{q}": ["experiment=vq_mini", f"tokenizer/quantizer={q}"] for q in ("ibq", "fsq", "lfq", "bsq")}}
SLOW = {"instella", "tokenflow"}  # paper widths: seconds each on a CPU


def test_every_tokenizer_config_is_in_the_suite():
    shipped = {p.stem for p in CONFIGS.glob("tokenizer/*.yaml")}
    assert shipped == set(PRESETS), f"add {sorted(shipped - set(PRESETS))} to PRESETS"


@pytest.fixture
def built(request, compose_cfg):
    cfg = compose_cfg(CASES[request.param])
    torch.manual_seed(0)
    tokenizer = instantiate(cfg.tokenizer)
    resolution = int(cfg.data.resolution)
    images = torch.rand(2, 3, resolution, resolution) * 2 - 1
    tokenizer.train()
    tokenizer(images)  # a training step's buffers (k-means init, EMA): what an export must carry
    return tokenizer.eval(), OmegaConf.to_container(cfg.tokenizer, resolve=True), images


def _cases():
    return [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [], id=name) for name in CASES]


@pytest.mark.parametrize("built", _cases(), indirect=True)
def test_encode_decode_lookup_and_declared_features(built):
    tokenizer, _, images = built
    assert isinstance(tokenizer, Tokenizer)
    with torch.no_grad():
        out = tokenizer.encode(images)
        recon = tokenizer.decode(out.embeddings, out.mask)
    streams = len(tokenizer.codebook_sizes)
    assert isinstance(out, TokenizerOutput) and recon.shape == images.shape
    assert out.indices.shape == (2, tokenizer.num_tokens, streams) and out.indices.dtype == torch.int64
    assert out.embeddings.shape == (2, tokenizer.num_tokens, tokenizer.embed_dim)
    assert out.mask is None or (out.mask.shape == (2, tokenizer.num_tokens) and out.mask.dtype == torch.bool)
    for c, size in enumerate(tokenizer.codebook_sizes):
        assert 0 <= int(out.indices[..., c].min()) and int(out.indices[..., c].max()) < size
    assert isinstance(tokenizer.ordered, bool) and len(tokenizer.stream_names) == streams
    if tokenizer.bits_per_token is not None:
        assert tokenizer.token_bits(out.indices).shape == (2, tokenizer.num_tokens, tokenizer.bits_per_token)
    else:
        with pytest.raises(NotImplementedError):
            tokenizer.token_bits(out.indices)
    with torch.no_grad():
        looked_up = tokenizer.lookup(out.indices)
        assert torch.allclose(looked_up, out.embeddings, atol=1e-5)
        assert torch.allclose(tokenizer.decode(looked_up, out.mask), recon, atol=1e-4)


@pytest.mark.parametrize("built", _cases(), indirect=True)
def test_export_round_trip_gives_the_same_ids_and_pixels(built, tmp_path):
    tokenizer, config, images = built
    loaded = load_tokenizer(save_tokenizer(tokenizer, config, tmp_path / "export", {"step": 1}))
    with torch.no_grad():
        a, b = tokenizer.encode(images), loaded.encode(images)
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(tokenizer.decode(a.embeddings, a.mask), loaded.decode(b.embeddings, b.mask))
