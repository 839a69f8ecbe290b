"""Pictures for flexible-length tokenizers: PSNR against k (PNG) and reconstructions at increasing k."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from vistok.eval.images import image_grid


def plot_psnr_vs_k(points: list[tuple[int, float]], path: str | Path, title: str = "",
                   baseline: float | None = None) -> Path:
    """Line plot of (k, PSNR dB) on a log2 k axis; `baseline` (e.g. the dataset-mean image) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ks, values = zip(*points)
    ax.plot(ks, values, marker="o")
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="grey", label="dataset-mean image")
        ax.legend(loc="lower right")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("tokens kept (k)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def prefix_grid(images: torch.Tensor, recons: dict[int, torch.Tensor]) -> Image.Image:
    """Top row: inputs (B, 3, H, W); then one row per k, in increasing k."""
    return image_grid([images, *(recons[k] for k in sorted(recons))])
