"""Held-out evaluation accumulated over a whole validation pass (reduced across ranks at the end)."""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from vistok.data.schema import CaptionSchema
from vistok.eval.metrics import (BitMetrics, CaptionMetrics, ReconstructionMetrics, TokenPredictionMetrics,
                                 computed)
from vistok.eval.recon import psnr_per_image
from vistok.training import prefix_eval
from vistok.training.prefix_eval import PrefixEvaluation


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
    reconstruction: ReconstructionMetrics = field(init=False)
    captions: CaptionMetrics = field(init=False)  # greedy captions
    caption_tokens: TokenPredictionMetrics = field(init=False)  # teacher-forced caption tokens
    generation_tokens: TokenPredictionMetrics = field(init=False)  # teacher-forced visual tokens (text-to-image)
    samples: list[SampleCaption] = field(default_factory=list)
    schema: CaptionSchema | None = field(default=None, repr=False)
    tokenizer: nn.Module | None = field(default=None, repr=False)  # given: family metrics (BitEvaluation.applies)
    bits: BitEvaluation | None = field(init=False, default=None)
    prefix: PrefixEvaluation | None = field(init=False, default=None)  # flexible-length: psnr@k
    token_budgets: list[int] = field(default_factory=list)  # TokenFLEX: caption metrics per visual-token budget
    budget_tokens: dict[int, TokenPredictionMetrics] = field(init=False)

    def __post_init__(self) -> None:
        self.reconstruction = ReconstructionMetrics(self.codebook_size)
        self.captions = CaptionMetrics(self.schema)
        self.caption_tokens = TokenPredictionMetrics("caption_loss", "caption_token_accuracy")
        self.generation_tokens = TokenPredictionMetrics("generation_loss", "generation_accuracy")
        self.budget_tokens = {int(b): TokenPredictionMetrics(f"caption_loss@{b}", f"caption_token_accuracy@{b}")
                              for b in self.token_budgets}
        if self.tokenizer is not None and BitEvaluation.applies(self.tokenizer):
            self.bits = BitEvaluation(self.tokenizer)
        if self.tokenizer is not None and prefix_eval.applies(self.tokenizer):
            self.prefix = PrefixEvaluation(self.tokenizer)

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
        """Every rank computes the same metrics in the same order (each syncs across ranks)."""
        metrics = computed(self.reconstruction)
        if self.bits is not None:
            metrics.update(self.bits.compute())
        if self.prefix is not None:
            metrics.update(self.prefix.compute())
        for budget_metric in self.budget_tokens.values():
            metrics.update(computed(budget_metric))
        metrics.update(computed(self.caption_tokens))
        metrics.update(computed(self.generation_tokens))
        metrics.update(computed(self.captions))
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


class BitEvaluation:
    """Binary-token metrics over a validation pass (`vistok.eval.metrics.BitMetrics`): the eval-mode bits, and
    for stochastic quantizers a second pass with the quantizer sampling bits as in training."""

    def __init__(self, tokenizer: nn.Module):
        self.tokenizer = tokenizer
        self.stochastic = tokenizer.quantizer.stochastic
        self.metric = BitMetrics(tokenizer.num_tokens, tokenizer.bits_per_token, self.stochastic)

    @staticmethod
    def applies(tokenizer: nn.Module) -> bool:
        return tokenizer.bits_per_token is not None

    @torch.no_grad()
    def add(self, images: torch.Tensor, indices: torch.Tensor, eval_psnr: torch.Tensor) -> None:
        """images (B, 3, H, W), indices (B, N, C) of the eval-mode pass, its per-image PSNR (B,)."""
        train_psnr = None
        if self.stochastic:
            with sampling_quantizer(self.tokenizer):
                sampled, _ = self.tokenizer(images)
            train_psnr = psnr_per_image(images, sampled)
        self.metric.update(self.tokenizer.token_bits(indices), eval_psnr, train_psnr)

    def compute(self) -> dict[str, float]:
        return self.metric.compute()


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
