"""Held-out evaluation accumulated over a whole validation pass (reduced across ranks at the end)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vistok import dist
from vistok.data.generated import SLOTS, parse_caption
from vistok.eval.recon import psnr_per_image, ssim_per_image
from vistok.eval.tokens import code_histogram, codebook_stats


@dataclass
class SampleCaption:
    key: str
    reference: str
    generated: str


@dataclass
class ValidationAccumulator:
    """Sums over the eval set; `compute()` turns them into the metric names of metrics.json."""

    codebook_size: int
    sums: dict[str, float] = field(init=False)
    histogram: torch.Tensor = field(init=False)
    samples: list[SampleCaption] = field(default_factory=list)

    # Every rank reduces the same keys in the same order, even a rank that saw no batch.
    KEYS = ("images", "psnr", "ssim", "caption_tokens", "caption_nll", "caption_correct", "captions",
            "caption_exact_match", "slot_captions", *(f"attribute_accuracy/{s}" for s in SLOTS))

    def __post_init__(self) -> None:
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.histogram = torch.zeros(self.codebook_size, dtype=torch.float64)

    def add(self, name: str, value: float) -> None:
        self.sums[name] += float(value)

    def add_reconstruction(self, images: torch.Tensor, recon: torch.Tensor, indices: torch.Tensor) -> None:
        self.add("images", images.shape[0])
        self.add("psnr", psnr_per_image(images, recon).sum())
        self.add("ssim", ssim_per_image(images, recon).sum())
        self.histogram += code_histogram(indices.cpu(), self.codebook_size)

    def add_captions(self, keys: list[str], references: list[str], generated: list[str], keep: int) -> None:
        for key, ref, gen in zip(keys, references, generated):
            self.add("captions", 1)
            self.add("caption_exact_match", gen.strip() == ref.strip())
            truth = parse_caption(ref)
            if any(v is None for v in truth.values()):
                continue  # not a generated-dataset caption: no slots to score
            guess = parse_caption(gen)
            self.add("slot_captions", 1)
            for slot in SLOTS:
                self.add(f"attribute_accuracy/{slot}", guess[slot] == truth[slot])
            if len(self.samples) < keep:
                self.samples.append(SampleCaption(key, ref, gen))

    def compute(self) -> dict[str, float]:
        names = list(self.KEYS)
        totals = dist.all_reduce_sum(torch.tensor([self.sums[n] for n in names], dtype=torch.float64))
        sums = dict(zip(names, totals.tolist()))
        metrics: dict[str, float] = {}
        if sums.get("images"):
            metrics["psnr"] = sums["psnr"] / sums["images"]
            metrics["ssim"] = sums["ssim"] / sums["images"]
        histogram = dist.all_reduce_sum(self.histogram.clone())
        if histogram.sum() > 0:
            metrics.update(codebook_stats(histogram))
        if sums.get("caption_tokens"):
            metrics["caption_loss"] = sums["caption_nll"] / sums["caption_tokens"]
            metrics["caption_token_accuracy"] = sums["caption_correct"] / sums["caption_tokens"]
        if sums.get("captions"):
            metrics["caption_exact_match"] = sums["caption_exact_match"] / sums["captions"]
        if sums.get("slot_captions"):
            per_slot = {s: sums[f"attribute_accuracy/{s}"] / sums["slot_captions"] for s in SLOTS}
            metrics["attribute_accuracy"] = sum(per_slot.values()) / len(per_slot)
            metrics.update({f"attribute_accuracy/{s}": v for s, v in per_slot.items()})
        return metrics
