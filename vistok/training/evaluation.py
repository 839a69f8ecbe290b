"""Held-out evaluation accumulated over a whole validation pass (reduced across ranks at the end)."""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from vistok import dist
from vistok.data.schema import CaptionSchema
from vistok.eval.bits import binary_entropy, bit_counts, bit_entropy
from vistok.eval.metrics import CaptionMetrics, ReconstructionMetrics
from vistok.eval.recon import psnr_per_image
from vistok.training import prefix_eval
from vistok.training.budgets import BudgetAccuracy
from vistok.training.prefix_eval import PrefixPSNR


@dataclass
class SampleCaption:
    key: str
    reference: str
    generated: str
    image: torch.Tensor | None = field(default=None, repr=False)  # (3, H, W) in [-1, 1], on the CPU


@dataclass
class ValidationAccumulator:
    """Sums over the eval set; `compute()` turns them into the metric names of metrics.json. Reconstruction and
    caption metrics are the ones `scripts.evaluate` uses (vistok/eval/metrics.py); attribute accuracies need the
    data's caption schema (`schema`; None = free-text captions, no attribute metrics)."""

    codebook_size: int
    sums: dict[str, float] = field(init=False)
    reconstruction: ReconstructionMetrics = field(init=False)
    captions: CaptionMetrics = field(init=False)
    samples: list[SampleCaption] = field(default_factory=list)
    schema: CaptionSchema | None = field(default=None, repr=False)
    tokenizer: nn.Module | None = field(default=None, repr=False)  # given: family metrics (BitMetrics.applies)
    bits: BitMetrics | None = field(init=False, default=None)
    prefix: PrefixPSNR | None = field(init=False, default=None)  # flexible-length: psnr@k
    token_budgets: list[int] = field(default_factory=list)  # TokenFLEX: caption metrics per visual-token budget
    budget_accuracy: BudgetAccuracy = field(init=False)

    # Every rank reduces the same keys in the same order, even a rank that saw no batch.
    KEYS = ("caption_tokens", "caption_nll", "caption_correct", "generation_count", "generation_correct",
            "generation_nll")

    def __post_init__(self) -> None:
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.reconstruction = ReconstructionMetrics(self.codebook_size)
        self.captions = CaptionMetrics(self.schema)
        if self.tokenizer is not None and BitMetrics.applies(self.tokenizer):
            self.bits = BitMetrics(self.tokenizer)
        self.budget_accuracy = BudgetAccuracy(self.token_budgets)
        if self.tokenizer is not None and prefix_eval.applies(self.tokenizer):
            self.prefix = PrefixPSNR(self.tokenizer)

    def add(self, name: str, value: float) -> None:
        self.sums[name] += float(value)

    def add_reconstruction(self, images: torch.Tensor, recon: torch.Tensor, indices: torch.Tensor) -> None:
        self.reconstruction.update(images, recon, indices)
        if self.bits is not None:
            self.bits.add(images, indices, psnr_per_image(images, recon))
        if self.prefix is not None:
            self.prefix.add(images)

    def add_captions(self, keys: list[str], references: list[str], generated: list[str], keep: int,
                     images: torch.Tensor | None = None) -> None:
        """Score greedy captions against their references and keep the first `keep` as samples (with their
        image when `images` (B, 3, H, W) is given), whatever the captions say; only references that name every
        attribute of the schema are scored per attribute."""
        self.captions.update(references, generated)
        for row, (key, ref, gen) in enumerate(zip(keys, references, generated)):
            if len(self.samples) < keep:
                image = None if images is None else images[row].detach().cpu()
                self.samples.append(SampleCaption(key, ref, gen, image))

    def compute(self) -> dict[str, float]:
        names = list(self.KEYS)
        totals = dist.all_reduce_sum(torch.tensor([self.sums[n] for n in names], dtype=torch.float64))
        sums = dict(zip(names, totals.tolist()))
        metrics = self.reconstruction.compute()
        if self.bits is not None:
            metrics.update(self.bits.compute())
        if self.prefix is not None:
            metrics.update(self.prefix.compute())
        metrics.update(self.budget_accuracy.compute())
        if sums.get("caption_tokens"):
            metrics["caption_loss"] = sums["caption_nll"] / sums["caption_tokens"]
            metrics["caption_token_accuracy"] = sums["caption_correct"] / sums["caption_tokens"]
        if sums.get("generation_count"):  # teacher-forced visual-token predictions (text-to-image)
            metrics["generation_loss"] = sums["generation_nll"] / sums["generation_count"]
            metrics["generation_accuracy"] = sums["generation_correct"] / sums["generation_count"]
        if self.captions.update_count:  # runs with an LLM: every rank scores captions, so every rank syncs
            metrics.update(self.captions.compute())
        return metrics


@contextmanager
def sampling_quantizer(tokenizer: nn.Module):
    """The quantizer in training mode (sampled bits), the rest of the tokenizer as it is."""
    quantizer, was_training = tokenizer.quantizer, tokenizer.quantizer.training
    quantizer.train()
    try:
        yield
    finally:
        quantizer.train(was_training)


class BitMetrics:
    """Binary-token metrics over an eval set, for tokenizers whose ids are bit strings (`token_bits`).

    - `bit_entropy`: mean over the K bits of the entropy (in bits) of each bit's frequency of ones, pooled
      over token positions and images; `token_bit_entropy`: the same per (token position, bit);
      `token_bit_entropy/min_position`: the lowest per-position mean of it (0 = a position that never varies).
    - `psnr_train_mode`: PSNR with the quantizer sampling bits as in training (stochastic quantizers only),
      and `train_eval_psnr_gap` = psnr (thresholded bits) - psnr_train_mode.
    """

    def __init__(self, tokenizer: nn.Module):
        self.tokenizer = tokenizer
        self.stochastic = bool(getattr(tokenizer.quantizer, "stochastic", False))
        # sums reduced across ranks: ones per (token, bit), images, train-mode PSNR, eval-mode PSNR
        self.ones = torch.zeros(tokenizer.num_tokens, tokenizer.bits_per_token, dtype=torch.float64)
        self.scalars = torch.zeros(3, dtype=torch.float64)

    @staticmethod
    def applies(tokenizer: nn.Module) -> bool:
        return getattr(tokenizer, "bits_per_token", None) is not None and hasattr(tokenizer, "token_bits")

    @torch.no_grad()
    def add(self, images: torch.Tensor, indices: torch.Tensor, eval_psnr: torch.Tensor) -> None:
        """images (B, 3, H, W), indices (B, N, C) of the eval-mode pass, its per-image PSNR (B,)."""
        self.ones += bit_counts(self.tokenizer.token_bits(indices)).cpu()
        self.scalars[0] += images.shape[0]
        if self.stochastic:
            with sampling_quantizer(self.tokenizer):
                sampled, _ = self.tokenizer(images)
            self.scalars[1] += float(psnr_per_image(images, sampled).sum())
            self.scalars[2] += float(eval_psnr.sum())

    def compute(self) -> dict[str, float]:
        ones, scalars = dist.all_reduce_sum(self.ones.clone()), dist.all_reduce_sum(self.scalars.clone())
        images = float(scalars[0])
        if not images:
            return {}
        per_token = ones / images  # (N, K) frequency of ones
        metrics = {"bit_entropy": bit_entropy(per_token.mean(0)), "token_bit_entropy": bit_entropy(per_token),
                   # the least informative token position: a collapsed position (constant bits) shows here
                   # even when the mean over positions looks healthy
                   "token_bit_entropy/min_position": float(binary_entropy(per_token).mean(1).min())}
        if self.stochastic:
            metrics["psnr_train_mode"] = float(scalars[1]) / images
            metrics["train_eval_psnr_gap"] = (float(scalars[2]) - float(scalars[1])) / images
        return metrics


class UsageWindow:
    """Codebook usage and perplexity over the last `window` training steps.

    One running (K,) histogram on the ids' device: each step adds its ids' counts and takes away those of
    the step leaving the window. A step costs O(B*N + K) on the device and never waits for it (no copy to
    the CPU, no sort of the whole window); `stats` returns 0-d tensors, read when the logger writes them.
    K can be 65,536 (16-bit binary tokens): one histogram, not one per step.
    """

    def __init__(self, codebook_size: int, window: int):
        self.codebook_size = codebook_size
        self.steps: deque[torch.Tensor] = deque(maxlen=window)  # each step's flattened ids (B*N*C,)
        self.histogram: torch.Tensor | None = None  # (K,) int64 counts over the window

    def add(self, indices: torch.Tensor) -> None:
        ids = indices.detach().flatten().long()
        if self.histogram is None or self.histogram.device != ids.device:  # first step, or the module moved
            self.histogram = torch.zeros(self.codebook_size, dtype=torch.long, device=ids.device)
            self.steps = deque((old.to(ids.device) for old in self.steps), maxlen=self.steps.maxlen)
            for old in self.steps:
                self.histogram.index_add_(0, old, torch.ones_like(old))
        if len(self.steps) == self.steps.maxlen:
            leaving = self.steps[0]
            self.histogram.index_add_(0, leaving, -torch.ones_like(leaving))
        self.steps.append(ids)
        self.histogram.index_add_(0, ids, torch.ones_like(ids))

    def stats(self) -> dict[str, torch.Tensor]:
        """Same values as `codebook_stats` on the window's histogram, as 0-d tensors."""
        if self.histogram is None:
            return {"codebook_usage": torch.tensor(0.0), "codebook_perplexity": torch.tensor(1.0)}
        counts = self.histogram.double()
        probs = counts / counts.sum()
        entropy = -torch.special.xlogy(probs, probs).sum()  # 0 log 0 = 0
        return {"codebook_usage": (counts > 0).double().mean(), "codebook_perplexity": entropy.exp()}
