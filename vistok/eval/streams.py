"""Validation metrics beyond the common ones: linear probes of the caption attributes (when asked) and
codebook usage / perplexity per code stream for tokenizers with several (dual: semantic and pixel)."""

from __future__ import annotations

import torch

from vistok.data.schema import CaptionSchema
from vistok.eval.metrics import StreamUsage
from vistok.eval.probe import LinearProbe
from vistok.tokenizers.base import TokenizerOutput


class StreamMetrics:
    """Accumulates over a validation pass; `compute()` gives `probe_accuracy[/...]` and, when C > 1,
    `codebook_usage/<stream>` and `codebook_perplexity/<stream>`.

    The probe sees this process's share of the eval set (every 5th sample held out).
    """

    def __init__(self, tokenizer, probe: bool = False, schema: CaptionSchema | None = None):
        self.sizes = tuple(tokenizer.codebook_sizes)
        self.probe = LinearProbe(schema=schema) if probe else None
        self.usage = StreamUsage(self.sizes, tokenizer.stream_names) if len(self.sizes) > 1 else None

    def update(self, out: TokenizerOutput, captions: list[str]) -> None:
        if self.usage is not None:
            self.usage.update(out.indices)
        if self.probe is not None and captions:
            self.probe.update(out, list(captions), self.sizes)

    def compute(self) -> dict[str, float]:
        metrics = self.usage.compute() if self.usage is not None else {}
        if self.probe is not None:
            # Lightning validates under inference mode, where no tensor can require grad: fit the probes outside it.
            with torch.inference_mode(False), torch.enable_grad():
                metrics.update(self.probe.compute())
        return metrics
