"""The quantizer contract, for every adapter behind `Quantizer`."""

from __future__ import annotations

import pytest
import torch

from vistok.tokenizers.quantizers.base import QuantizerOutput
from vistok.tokenizers.quantizers.fsq import FiniteScalarQuantizer
from vistok.tokenizers.quantizers.ibq import IndexBackpropQuantizer
from vistok.tokenizers.quantizers.lfq import LookupFreeQuantizer
from vistok.tokenizers.quantizers.vq import VectorQuantizer

D = 8
FACTORIES = {
    "vq": lambda: VectorQuantizer(D, 32, kmeans_init=False),
    "vq_kmeans_cosine": lambda: VectorQuantizer(D, 32, kmeans_init=True, use_cosine_sim=True),
    "vq_projected": lambda: VectorQuantizer(D, 32, codebook_dim=4),
    "ibq": lambda: IndexBackpropQuantizer(D, 32),
    "fsq": lambda: FiniteScalarQuantizer(D, [5, 4, 3]),
    "lfq": lambda: LookupFreeQuantizer(D, 64),
}


@pytest.fixture(params=sorted(FACTORIES))
def quantizer(request):
    torch.manual_seed(0)
    return FACTORIES[request.param]()


def test_output_shapes_and_range(quantizer):
    z = torch.randn(4, 10, D)
    out = quantizer(z)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == (4, 10, D)
    assert out.indices.shape == (4, 10) and out.indices.dtype == torch.int64
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < quantizer.codebook_size
    assert all(v.dim() == 0 for v in out.losses.values())


def test_eval_lookup_matches_quantized(quantizer):
    quantizer.train()
    quantizer(torch.randn(8, 16, D))  # initialise (k-means) / update once in training mode
    quantizer.eval()
    with torch.no_grad():
        out = quantizer(torch.randn(3, 7, D))
        assert torch.allclose(quantizer.lookup(out.indices), out.quantized, atol=1e-5)


def test_gradient_reaches_input(quantizer):
    z = torch.randn(4, 10, D, requires_grad=True)
    out = quantizer(z)
    (out.quantized.square().sum() + sum(out.losses.values(), torch.zeros(()))).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_deterministic_under_seed():
    for name, factory in FACTORIES.items():
        outs = []
        for _ in range(2):
            torch.manual_seed(3)
            q = factory()
            z = torch.randn(2, 5, D)
            outs.append(q(z).indices)
        assert torch.equal(outs[0], outs[1]), name


def test_ibq_codebook_starts_as_ibqs_code_starts_it():
    """N(0, 1) (nn.Embedding's init, which IBQ's code keeps), not VQGAN's U(-1/K, 1/K): with dot-product logits a
    near-zero codebook leaves every code's logit near 0 at the start."""
    torch.manual_seed(0)
    codes = IndexBackpropQuantizer(16, 4096).codebook.weight
    assert abs(float(codes.std()) - 1.0) < 0.02 and abs(float(codes.mean())) < 0.02


def test_ibq_every_code_gets_gradient():
    """Index backpropagation: the softmax straight-through sends gradient to the whole codebook."""
    q = IndexBackpropQuantizer(D, 32)
    out = q(torch.randn(4, 10, D))
    out.quantized.sum().backward()
    assert (q.codebook.weight.grad.abs().sum(-1) > 0).all()


def test_ibq_cosine_similarity_picks_by_angle_not_norm():
    """With cosine similarity a long code cannot win the argmax by its norm, and the output is a unit code."""
    q = IndexBackpropQuantizer(2, 2, cosine_similarity=True)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.tensor([[1.0, 0.0], [10.0, 10.0]]))
    z = torch.tensor([[[2.0, 0.1]]])  # (1, 1, 2): closest in angle to code 0, largest dot product with code 1
    out = q(z)
    assert out.indices.item() == 0
    assert torch.allclose(out.quantized.norm(dim=-1), torch.ones(1, 1))
    plain = IndexBackpropQuantizer(2, 2)
    with torch.no_grad():
        plain.codebook.weight.copy_(q.codebook.weight)
    assert plain(z).indices.item() == 1


def test_vq_frozen_in_eval_mode_does_not_update_codebook():
    q = VectorQuantizer(D, 32, kmeans_init=False)
    q(torch.randn(4, 10, D))
    before = q.vq._codebook.embed.clone()
    q.eval()
    with torch.no_grad():
        q(torch.randn(4, 10, D) * 5)
    assert torch.equal(before, q.vq._codebook.embed)


def test_lfq_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        LookupFreeQuantizer(D, 100)


@pytest.mark.parametrize("name", ["vq", "ibq"])
def test_frozen_codebook_still_passes_gradient_to_a_trainable_encoder(name):
    """A stage may train the encoder but not the quantizer: codes must not move, gradients must flow."""
    q = FACTORIES[name]()
    q(torch.randn(8, 16, D))  # initialise
    q.eval()
    q.requires_grad_(False)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    z = torch.randn(4, 10, D, requires_grad=True)
    out = q(z)
    out.quantized.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    with torch.no_grad():
        assert torch.allclose(q(z.detach()).quantized, out.quantized.detach(), atol=1e-5)
