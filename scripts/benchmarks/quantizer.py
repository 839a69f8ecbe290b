"""Quantizer adapters vs calling vector-quantize-pytorch directly (same settings, forward + backward)."""

from __future__ import annotations

import torch
from vector_quantize_pytorch import VectorQuantize

from scripts.benchmarks.timing import interleaved, verdict

TARGET = 1.03


def quantizer_adapter(batch: int = 64, tokens: int = 64, dim: int = 16, codebook_size: int = 1024,
                      calls: int = 1, rounds: int = 61, warmup: int = 5) -> dict:
    from vistok.tokenizers.quantizers.vq import VectorQuantizer

    torch.manual_seed(0)
    # No dead-code restarts: they re-seed a random number of codes from random samples, so the two sides
    # would do different work. Both start from the same codebook and see the same input.
    settings = dict(dim=dim, codebook_size=codebook_size, decay=0.8, kmeans_init=False, use_cosine_sim=False,
                    threshold_ema_dead_code=0.0, rotation_trick=True)
    adapter = VectorQuantizer(**settings).train()
    direct = VectorQuantize(**settings, commitment_weight=1.0).train()
    direct.load_state_dict(adapter.vq.state_dict())
    x = torch.randn(batch, tokens, dim, requires_grad=True)

    def through_adapter():
        out = adapter(x)
        (out.quantized.sum() + sum(out.losses.values())).backward()

    def through_library():
        quantized, _, loss = direct(x)
        (quantized.sum() + loss.sum()).backward()

    adapter_s, direct_s, ratio = interleaved(through_adapter, through_library, calls, rounds, warmup)
    result = {"adapter_ms": adapter_s * 1e3, "direct_ms": direct_s * 1e3, "ratio": ratio}
    print(f"quantizer_adapter: VectorQuantizer {result['adapter_ms']:.2f} ms vs VectorQuantize "
          f"{result['direct_ms']:.2f} ms (B {batch} x N {tokens} x D {dim}, K {codebook_size}, fwd+bwd): "
          f"ratio {ratio:.3f} (median of {rounds} rounds) {verdict(ratio, TARGET, higher_is_better=False)}")
    return result
