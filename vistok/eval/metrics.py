"""Metrics over a whole eval set, shared by validation (vistok.training) and `scripts.evaluate`.

Each is a `torchmetrics.Metric` whose states are sums, so that ranks combine by summing when `compute` runs in a
distributed job (torchmetrics syncs them; a rank that saw no batch adds zeros).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from vistok.data.schema import CaptionSchema
from vistok.eval.recon import psnr_per_image, ssim_per_image
from vistok.eval.tokens import code_histogram, codebook_stats


def _sum_state(metric: Metric, name: str, shape: tuple[int, ...] = ()) -> None:
    metric.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")


class ReconstructionMetrics(Metric):
    """Mean PSNR and SSIM per image (`psnr`, `ssim`), and codebook usage and perplexity over every id seen."""

    full_state_update = False

    def __init__(self, codebook_size: int):
        super().__init__()
        self.codebook_size = codebook_size
        for name in ("images", "psnr", "ssim"):
            _sum_state(self, name)
        _sum_state(self, "histogram", (codebook_size,))  # (K,) counts of each code id

    def update(self, images: torch.Tensor, recon: torch.Tensor, indices: torch.Tensor) -> None:
        """images, recon (B, 3, H, W) in [-1, 1]; indices (B, N, C) the ids of the same images."""
        self.images += images.shape[0]
        self.psnr += psnr_per_image(images, recon).sum().to(self.psnr)
        self.ssim += ssim_per_image(images, recon).sum().to(self.ssim)
        self.histogram += code_histogram(indices.detach(), self.codebook_size).to(self.histogram)

    def compute(self) -> dict[str, float]:
        if not self.images:
            return {}
        metrics = {"psnr": float(self.psnr / self.images), "ssim": float(self.ssim / self.images)}
        return metrics | codebook_stats(self.histogram.cpu())


class CaptionMetrics(Metric):
    """Greedy captions against their references: `caption_exact_match`, and with a `CaptionSchema` the accuracy
    of each attribute it names (`attribute_accuracy/<slot>`, mean `attribute_accuracy`), over the references that
    name every attribute. Without a schema (free-text captions) there are no attribute metrics."""

    full_state_update = False

    def __init__(self, schema: CaptionSchema | None = None):
        super().__init__()
        self.schema = schema
        for name in ("captions", "exact", "slot_captions"):
            _sum_state(self, name)
        _sum_state(self, "slot_correct", (len(schema.slots) if schema else 0,))

    def update(self, references: list[str], generated: list[str]) -> None:
        for reference, guess in zip(references, generated):
            self.captions += 1
            self.exact += guess.strip() == reference.strip()
            truth = self.schema.labels(reference) if self.schema else None
            if truth is None:
                continue  # free text, or a caption that leaves an attribute out: nothing to score per attribute
            said = self.schema.parse(guess)
            self.slot_captions += 1
            self.slot_correct += torch.tensor([said[s] == truth[s] for s in self.schema.slots]).to(self.slot_correct)

    def compute(self) -> dict[str, float]:
        metrics = {"caption_exact_match": float(self.exact / self.captions)} if self.captions else {}
        if self.slot_captions:
            per_slot = {s: float(c / self.slot_captions) for s, c in zip(self.schema.slots, self.slot_correct)}
            metrics["attribute_accuracy"] = sum(per_slot.values()) / len(per_slot)
            metrics.update({f"attribute_accuracy/{s}": v for s, v in per_slot.items()})
        return metrics
