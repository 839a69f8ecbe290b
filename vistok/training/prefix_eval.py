"""PSNR@k for flexible-length tokenizers: decode from the first k tokens, k = 1, 2, 4, ..., N.

Metric names `psnr@<k>` (DESIGN.md). Evaluated on every validation batch, so the curve uses the same images
as `psnr`; the PSNR-vs-k plot and the grid at increasing k are drawn from these (training/report.py).
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.eval.jpeg import jpeg_points, token_bytes
from vistok.eval.metrics import PrefixPSNR
from vistok.tokenizers.flex import powers_of_two


def prefix_lengths(tokenizer: nn.Module) -> list[int]:
    return powers_of_two(tokenizer.num_tokens)


def applies(tokenizer: nn.Module) -> bool:
    """Only tokenizers whose token order is meaningful (`ordered`) decode from a prefix."""
    return tokenizer.ordered


@torch.no_grad()
def decode_prefixes(tokenizer: nn.Module, images: torch.Tensor, ks: list[int]) -> dict[int, torch.Tensor]:
    """{k: (B, 3, H, W) reconstruction from the first k tokens}, one encode for all k."""
    full = tokenizer.encode(images, num_tokens=tokenizer.num_tokens)
    recons = {}
    for k in ks:
        mask = torch.arange(tokenizer.num_tokens, device=images.device)[None, :].expand(images.shape[0], -1) < k
        recons[k] = tokenizer.decode(full.embeddings, None if k == tokenizer.num_tokens else mask)
    return recons


class PrefixEvaluation:
    """PSNR@k over a validation pass (`vistok.eval.metrics.PrefixPSNR`), plus what the pictures need.

    The dataset-mean image is the mean of the first validation batch; `jpeg` an exploratory codec baseline from
    the same batch (rank 0's view); `preview` the inputs and reconstructions at every k of its first 8 images.
    """

    def __init__(self, tokenizer: nn.Module):
        self.tokenizer = tokenizer
        self.ks = prefix_lengths(tokenizer)
        self.metric = PrefixPSNR(self.ks)
        self.mean_image: torch.Tensor | None = None  # (1, 3, H, W)
        self.jpeg: dict[str, float] = {}
        # made here, on every rank, because a forward on rank 0 alone would hang a sharded (FSDP2) tokenizer
        self.preview: dict[str, torch.Tensor] = {}

    def add(self, images: torch.Tensor) -> None:
        """images (B, 3, H, W) of the valid rows. Every rank runs the forwards, even with B = 0 (collectives)."""
        recons = decode_prefixes(self.tokenizer, images, self.ks)
        if images.shape[0] == 0:
            return
        if self.mean_image is None:
            self.preview = {"images": images[:8].cpu(), **{f"k{k}": r[:8].cpu() for k, r in recons.items()}}
            self.mean_image = images.float().mean(0, keepdim=True)
            self.jpeg = jpeg_points(images)
        self.metric.update(images, recons, self.mean_image)

    def compute(self) -> dict[str, float]:
        metrics = self.metric.compute()  # every rank syncs, even one that saw no image
        if not metrics:
            return {}
        metrics["bytes@full"] = token_bytes(self.tokenizer.num_tokens, self.tokenizer.codebook_size)
        return {**metrics, **self.jpeg}


def curve(metrics: dict[str, float]) -> list[tuple[int, float]]:
    """[(k, psnr@k)] sorted by k, from a metrics dict."""
    points = [(int(name.split("@", 1)[1]), value) for name, value in metrics.items() if name.startswith("psnr@")]
    return sorted(points)
