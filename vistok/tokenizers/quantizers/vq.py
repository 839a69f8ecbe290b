"""Nearest-neighbour vector quantization (vector-quantize-pytorch `VectorQuantize`) behind `Quantizer`."""

from __future__ import annotations

import torch
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch import vector_quantize_pytorch as vqp_impl

from vistok import dist
from vistok.tokenizers.quantizers.base import Quantizer, QuantizerOutput


class VectorQuantizer(Quantizer):
    """VQ codebook with EMA updates, optional k-means init, cosine similarity and dead-code restart.

    Codebook synchronisation across ranks is decided on the first training forward, not at
    construction: Hydra builds the model before Lightning creates the process group, and
    vector-quantize-pytorch would otherwise freeze "not distributed" into the codebook and let each
    rank's EMA codebook drift apart.

    Args:
        dim: input/output feature size D.
        codebook_size: number of codes K.
        codebook_dim: code size if different from D (a linear projection in and out is added).
        decay: EMA decay of the codebook statistics.
        kmeans_init: initialise codes from the first batch with k-means.
        use_cosine_sim: l2-normalise inputs and codes (cosine codebook).
        threshold_ema_dead_code: codes whose EMA usage falls below this are re-seeded from the batch.
        rotation_trick: gradient estimator through the quantizer (rotation trick vs. plain STE).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        decay: float = 0.8,
        kmeans_init: bool = True,
        use_cosine_sim: bool = False,
        threshold_ema_dead_code: float = 2.0,
        rotation_trick: bool = True,
    ):
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            decay=decay,
            kmeans_init=kmeans_init,
            use_cosine_sim=use_cosine_sim,
            threshold_ema_dead_code=threshold_ema_dead_code,
            rotation_trick=rotation_trick,
            commitment_weight=1.0,  # unweighted: the training config owns loss weights
            sync_codebook=False,  # rebound at call time, see _bind_codebook_sync
        )
        self._sync_bound = False

    def _bind_codebook_sync(self) -> None:
        codebook = self.vq._codebook
        use_ddp = dist.is_distributed()
        codebook.use_ddp = use_ddp
        codebook.sample_fn = vqp_impl.sample_vectors_distributed if use_ddp else vqp_impl.batched_sample_vectors
        codebook.replace_sample_fn = codebook.sample_fn
        reduce_fn = vqp_impl.distributed.all_reduce if use_ddp else vqp_impl.noop
        codebook.kmeans_all_reduce_fn = reduce_fn
        codebook.all_reduce_fn = reduce_fn
        self._sync_bound = True

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.training and not self._sync_bound:
            self._bind_codebook_sync()
        if not self.training and z.requires_grad:
            return self._frozen_codebook_forward(z)
        quantized, indices, commit = self.vq(z)  # (B, N, D), (B, N), scalar
        return QuantizerOutput(quantized=quantized, indices=indices.long(), losses={"commit": commit})

    def _frozen_codebook_forward(self, z: torch.Tensor) -> QuantizerOutput:
        """A frozen quantizer under a trainable encoder: codes stay fixed (no EMA, no dead-code restart),
        but gradients still pass to the encoder. vector-quantize-pytorch only routes gradients in
        training mode, so run that path with the codebook frozen."""
        self.vq.train()
        try:
            quantized, indices, commit = self.vq(z, freeze_codebook=True)
        finally:
            self.vq.eval()
        return QuantizerOutput(quantized=quantized, indices=indices.long(), losses={"commit": commit})

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.vq.get_output_from_indices(indices)
