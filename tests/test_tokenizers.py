"""The `vq` family beyond the common contract (tests/test_tokenizer_contract.py): gradients, arguments."""

from __future__ import annotations

import pytest
import torch

from vistok.tokenizers.modules.conv import ConvDecoder, ConvEncoder
from vistok.tokenizers.quantizers.ibq import IndexBackpropQuantizer
from vistok.tokenizers.quantizers.vq import VectorQuantizer
from vistok.tokenizers.vq import VQTokenizer


def make_vq(quantizer=None, resolution=16):
    torch.manual_seed(0)
    quantizer = quantizer or VectorQuantizer(8, 32, kmeans_init=False)
    return VQTokenizer(ConvEncoder(out_dim=8, base_channels=8, ch_mult=(1, 2)), quantizer,
                       ConvDecoder(in_dim=8, base_channels=8, ch_mult=(1, 2)), resolution=resolution)


def test_gradient_reaches_every_trainable_parameter():
    tok = make_vq(IndexBackpropQuantizer(8, 32))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, out = tok(images)
    ((recon - images).abs().mean() + sum(out.losses.values())).backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_embeddings_carry_gradient_to_encoder():
    """What the LLM consumes (embeddings) must back-propagate into the encoder (straight-through)."""
    tok = make_vq()
    out = tok.encode(torch.rand(2, 3, 16, 16))
    out.embeddings.sum().backward()
    assert tok.encoder.net[0].weight.grad.abs().sum() > 0


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="not divisible"):
        make_vq(resolution=17)
    with pytest.raises(ValueError, match="num_tokens"):
        make_vq().encode(torch.rand(1, 3, 16, 16), num_tokens=3)


# ---- the VQGAN layout of IBQ's configs (encoder/ibq, decoder/ibq) ---------------------------------------


def _attention_count(module: torch.nn.Module) -> int:
    from vistok.tokenizers.modules.conv import SpatialSelfAttention

    return sum(isinstance(m, SpatialSelfAttention) for m in module.modules())


def test_attention_sits_at_the_asked_levels_and_in_the_middle():
    """attn_levels [1] with 3 blocks per level: 3 attention blocks at the 8 x 8 level plus one in the middle,
    on both sides; the default layout has none (its state dict is unchanged)."""
    kwargs = dict(base_channels=8, ch_mult=(1, 2), blocks_per_level=3, attn_levels=[1], mid_attention=True)
    encoder, decoder = ConvEncoder(out_dim=8, **kwargs), ConvDecoder(in_dim=8, **kwargs)
    assert _attention_count(encoder) == _attention_count(decoder) == 4
    plain = ConvEncoder(out_dim=8, base_channels=8, ch_mult=(1, 2))
    assert _attention_count(plain) == 0
    layout = [type(m).__name__ for m in plain.net]  # as before attention existed: checkpoints keep their keys
    assert layout == ["Conv2d", "ResBlock", "Conv2d", "ResBlock", "ResBlock", "GroupNorm", "SiLU", "Conv2d"]
    z = encoder(torch.rand(2, 3, 16, 16))
    assert z.shape == (2, 8, 8, 8) and decoder(z).shape == (2, 3, 16, 16)


def test_attention_is_one_head_softmax_attention_over_every_position():
    """Each output position mixes every input position: softmax(q k^T / sqrt(C)) v, projected and added."""
    from vistok.tokenizers.modules.conv import SpatialSelfAttention

    torch.manual_seed(0)
    attention, x = SpatialSelfAttention(8), torch.randn(2, 8, 4, 5)
    with torch.no_grad():
        q, k, v = attention.qkv(attention.norm(x)).flatten(2).chunk(3, dim=1)     # each (B, C, HW)
        weights = torch.softmax(q.transpose(1, 2) @ k / 8 ** 0.5, dim=-1)         # (B, HW, HW)
        mixed = (v @ weights.transpose(1, 2)).reshape(2, 8, 4, 5)
        expected = x + attention.proj(mixed)
        assert torch.allclose(attention(x), expected, atol=1e-5)
        assert (weights > 0).all()


def test_attention_levels_out_of_range_are_refused():
    with pytest.raises(ValueError, match="levels run 0..1"):
        ConvEncoder(base_channels=8, ch_mult=(1, 2), attn_levels=[2])
