"""Index backpropagation quantization (IBQ), the base quantizer of ETT.

Instead of copying a single code's gradient, IBQ takes a straight-through one-hot over a softmax of
the logits against the *whole* codebook, so every code receives gradient on every step and the
codebook stays in use at large K (IBQ, arXiv 2412.02692).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.tokenizers.quantizers.base import Quantizer, QuantizerOutput


class IndexBackpropQuantizer(Quantizer):
    """IBQ with its quantization loss and sample/batch entropy regulariser.

    Args:
        dim: feature size D (= code size).
        codebook_size: number of codes K.
        beta: weight of the code-to-encoder term inside the quantization loss.
        entropy_temperature: temperature of the softmax used by the entropy loss.
        cosine_similarity: l2-normalise features and codes before the logits (IBQ's `cosine_similarity`
            option): the logits become cosines in [-1, 1] and the codes' norms cannot decide the argmax.
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, entropy_temperature: float = 0.01,
                 cosine_similarity: bool = False):
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.beta = beta
        self.entropy_temperature = entropy_temperature
        self.cosine_similarity = cosine_similarity
        # nn.Embedding's N(0, 1) init, kept as IBQ's code keeps it. The logits are dot products (z . e):
        # VQGAN's U(-1/K, 1/K) init (earlier versions) started every logit near 0, so the first codes to
        # grow took the argmax.
        self.codebook = nn.Embedding(codebook_size, dim)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        codes = self._codes()  # (K, D)
        if self.cosine_similarity:
            z = F.normalize(z, dim=-1)
        logits = z @ codes.t()  # (B, N, K)
        indices = logits.argmax(dim=-1)  # (B, N)
        hard = F.embedding(indices, codes)  # (B, N, D)
        if not self.training and not z.requires_grad:
            return QuantizerOutput(quantized=hard, indices=indices, losses={})
        # Training, or a frozen codebook under a trainable encoder: the straight-through path.
        probs = logits.softmax(dim=-1)
        one_hot = F.one_hot(indices, self.codebook_size).to(probs.dtype)
        straight_through = one_hot - probs.detach() + probs  # value: one-hot; gradient: softmax
        quantized = straight_through @ codes  # (B, N, D)
        quant = (
            F.mse_loss(quantized, z)
            + F.mse_loss(z, hard.detach())
            + self.beta * F.mse_loss(hard, z.detach())
        )
        return QuantizerOutput(
            quantized=quantized, indices=indices, losses={"quant": quant, "entropy": self._entropy(logits)}
        )

    def _entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample entropy (make each assignment confident) minus batch entropy (use many codes)."""
        probs = (logits.flatten(0, -2) / self.entropy_temperature).softmax(dim=-1)  # (B*N, K)
        sample_entropy = -(probs * torch.log(probs + 1e-8)).sum(-1).mean()
        mean_probs = probs.mean(0)
        batch_entropy = -(mean_probs * torch.log(mean_probs + 1e-8)).sum()
        return sample_entropy - batch_entropy

    def _codes(self) -> torch.Tensor:
        """The codebook the logits and the lookup use: (K, D), unit rows under cosine similarity."""
        codes = self.codebook.weight
        return F.normalize(codes, dim=-1) if self.cosine_similarity else codes

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self._codes())
