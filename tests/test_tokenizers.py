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
