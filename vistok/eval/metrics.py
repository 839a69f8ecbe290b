"""Metrics over a whole eval set, shared by validation (vistok.training) and `scripts.evaluate`.

Each is a `torchmetrics.Metric` whose states are sums, so that ranks combine by summing when `compute` runs in a
distributed job (torchmetrics syncs them; a rank that saw no batch adds zeros).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from vistok.data.schema import CaptionSchema
from vistok.eval.bits import binary_entropy, bit_counts, bit_entropy
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


class TokenPredictionMetrics(Metric):
    """Teacher-forced next-token predictions: mean loss per scored token (`<loss_name>`) and the share predicted
    right (`<accuracy_name>`), e.g. `caption_loss` / `caption_token_accuracy` or `generation_loss` /
    `generation_accuracy`."""

    full_state_update = False

    def __init__(self, loss_name: str, accuracy_name: str):
        super().__init__()
        self.loss_name, self.accuracy_name = loss_name, accuracy_name
        for name in ("count", "correct", "nll"):
            _sum_state(self, name)

    def update(self, correct: torch.Tensor | float, count: torch.Tensor | float, loss: torch.Tensor | float) -> None:
        """`count` tokens scored in a batch, `correct` of them right, `loss` their mean (NaN when count is 0)."""
        count = float(count)
        if count:  # a batch of padding rows scores nothing (and its mean loss is NaN)
            self.count += count
            self.correct += float(correct)
            self.nll += float(loss) * count

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {self.loss_name: float(self.nll / self.count), self.accuracy_name: float(self.correct / self.count)}


class StreamUsage(Metric):
    """Codebook usage and perplexity of each code stream (`codebook_usage/<stream>`, ...), for tokenizers with
    several streams (dual: semantic and pixel)."""

    full_state_update = False

    def __init__(self, codebook_sizes: tuple[int, ...], names: tuple[str, ...]):
        super().__init__()
        self.sizes, self.names = tuple(codebook_sizes), tuple(names)
        for c, size in enumerate(self.sizes):
            _sum_state(self, f"histogram{c}", (size,))

    def update(self, indices: torch.Tensor) -> None:
        """indices (B, N, C): stream c's ids in [..., c]."""
        for c, size in enumerate(self.sizes):
            histogram = getattr(self, f"histogram{c}")
            histogram += code_histogram(indices[..., c].detach(), size)[:size].to(histogram)

    def compute(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for c, name in enumerate(self.names):
            stats = codebook_stats(getattr(self, f"histogram{c}").cpu())
            metrics.update({f"{key}/{name}": value for key, value in stats.items()})
        return metrics


def computed(metric: Metric) -> dict[str, float]:
    """`metric.compute()` when it saw a batch, else nothing. Whether a metric is updated follows from the
    experiment (an LLM, a visual head), the same on every rank, so every rank syncs the same metrics."""
    return metric.compute() if metric.update_count else {}


class BitMetrics(Metric):
    """Binary tokens (K-bit ids): `bit_entropy`, the mean over the K bits of the entropy (in bits) of each bit's
    frequency of ones, pooled over token positions and images; `token_bit_entropy`, the same per (position, bit);
    `token_bit_entropy/min_position`, the lowest per-position mean of it (0 = a position that never varies).
    With `stochastic` quantizers also `psnr_train_mode` (PSNR with bits sampled as in training) and
    `train_eval_psnr_gap` = psnr (thresholded bits) - psnr_train_mode."""

    full_state_update = False

    def __init__(self, num_tokens: int, bits_per_token: int, stochastic: bool):
        super().__init__()
        self.stochastic = stochastic
        _sum_state(self, "ones", (num_tokens, bits_per_token))  # (N, K) ones per position and bit
        for name in ("images", "psnr_train_mode", "psnr_eval_mode"):
            _sum_state(self, name)

    def update(self, bits: torch.Tensor, eval_psnr: torch.Tensor, train_psnr: torch.Tensor | None = None) -> None:
        """bits (B, N, K) in {0, 1} of the eval-mode pass; its per-image PSNR (B,); with stochastic quantizers the
        per-image PSNR (B,) of the same images with sampled bits."""
        self.ones += bit_counts(bits).to(self.ones)
        self.images += bits.shape[0]
        if train_psnr is not None:
            self.psnr_train_mode += train_psnr.sum().to(self.psnr_train_mode)
            self.psnr_eval_mode += eval_psnr.sum().to(self.psnr_eval_mode)

    def compute(self) -> dict[str, float]:
        if not self.images:
            return {}
        per_token = (self.ones / self.images).cpu()  # (N, K) frequency of ones
        metrics = {"bit_entropy": bit_entropy(per_token.mean(0)), "token_bit_entropy": bit_entropy(per_token),
                   # the least informative token position: a collapsed position (constant bits) shows here even
                   # when the mean over positions looks healthy
                   "token_bit_entropy/min_position": float(binary_entropy(per_token).mean(1).min())}
        if self.stochastic:
            metrics["psnr_train_mode"] = float(self.psnr_train_mode / self.images)
            metrics["train_eval_psnr_gap"] = float((self.psnr_eval_mode - self.psnr_train_mode) / self.images)
        return metrics


class PrefixPSNR(Metric):
    """Flexible-length tokenizers: mean PSNR of the reconstruction from the first k tokens (`psnr@<k>`), and
    `psnr_mean_image`, the PSNR of one fixed "dataset-mean image" (the floor of a decoder that ignores its
    tokens: a PSNR@k curve near it is flat for lack of capacity, not because of the token order)."""

    full_state_update = False

    def __init__(self, ks: list[int]):
        super().__init__()
        self.ks = list(ks)
        for name in ("images", "mean_image"):
            _sum_state(self, name)
        _sum_state(self, "psnr", (len(self.ks),))  # (len(ks),) sums of per-image PSNR at each k

    def update(self, images: torch.Tensor, recons: dict[int, torch.Tensor], mean_image: torch.Tensor) -> None:
        """images (B, 3, H, W); recons {k: (B, 3, H, W)}; mean_image (1, 3, H, W)."""
        self.images += images.shape[0]
        self.mean_image += psnr_per_image(images, mean_image.expand_as(images)).sum().to(self.mean_image)
        sums = torch.stack([psnr_per_image(images, recons[k]).sum() for k in self.ks])
        self.psnr += sums.to(self.psnr)

    def compute(self) -> dict[str, float]:
        if not self.images:
            return {}
        metrics = {f"psnr@{k}": float(s / self.images) for k, s in zip(self.ks, self.psnr)}
        return metrics | {"psnr_mean_image": float(self.mean_image / self.images)}
