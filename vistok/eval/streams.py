"""Validation metrics beyond the common ones: linear probes of the caption attributes (when asked) and
codebook usage / perplexity per code stream for tokenizers with several (dual: semantic and pixel)."""

from __future__ import annotations

import torch

from vistok import dist
from vistok.eval.probe import LinearProbe
from vistok.eval.tokens import code_histogram, codebook_stats
from vistok.tokenizers.base import TokenizerOutput


class StreamMetrics:
    """Accumulates over a validation pass; `compute()` gives `probe_accuracy[/...]` and, when C > 1,
    `codebook_usage/<stream>` and `codebook_perplexity/<stream>`.

    The probe sees this process's share of the eval set (every 5th sample held out, METHODS.md 11.6).
    """

    def __init__(self, tokenizer, probe: bool = False):
        self.sizes = tuple(tokenizer.codebook_sizes)
        self.names = tuple(getattr(tokenizer, "stream_names", None) or [f"stream{c}" for c in range(len(self.sizes))])
        self.probe = LinearProbe() if probe else None
        self.histograms = [torch.zeros(k, dtype=torch.float64) for k in self.sizes] if len(self.sizes) > 1 else []

    def update(self, out: TokenizerOutput, captions: list[str]) -> None:
        for c, size in enumerate(self.sizes if self.histograms else ()):
            self.histograms[c] += code_histogram(out.indices[..., c].cpu(), size)[:size]
        if self.probe is not None and captions:
            self.probe.update(out, list(captions), self.sizes)

    def compute(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, histogram in zip(self.names, self.histograms):
            stats = codebook_stats(dist.all_reduce_sum(histogram.clone()))
            metrics.update({f"{key}/{name}": value for key, value in stats.items()})
        if self.probe is not None:
            # Lightning validates under inference mode, where no tensor can require grad: fit the probes outside it.
            with torch.inference_mode(False), torch.enable_grad():
                metrics.update(self.probe.compute())
        return metrics
