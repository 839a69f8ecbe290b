"""Evaluate a tokenizer on held-out shards: reconstruction quality and codebook statistics."""

from __future__ import annotations

import torch
from tqdm import tqdm

from vistok.eval.recon import psnr_per_image, ssim_per_image
from vistok.eval.tokens import code_histogram, codebook_stats


@torch.no_grad()
def evaluate_tokenizer(tokenizer, loader, perceptual=None, max_batches: int | None = None) -> dict[str, float]:
    """Mean PSNR / SSIM (/ LPIPS) over the loader; codebook usage and perplexity over the whole set."""
    tokenizer.eval()
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    images_seen, skipped = 0, 0
    histogram = torch.zeros(tokenizer.codebook_size, dtype=torch.float64)
    for i, batch in enumerate(tqdm(loader, desc="evaluate", unit="batch")):
        if max_batches is not None and i >= max_batches:
            break
        images = batch["image"]
        skipped += int(batch.get("skipped", 0))
        recon, out = tokenizer(images)
        sums["psnr"] += float(psnr_per_image(images, recon).sum())
        sums["ssim"] += float(ssim_per_image(images, recon).sum())
        if perceptual is not None:
            sums["lpips"] += float(perceptual(images, recon)) * images.shape[0]
        histogram += code_histogram(out.indices, tokenizer.codebook_size)
        images_seen += images.shape[0]
    if images_seen == 0:
        raise ValueError("the evaluation data yielded no images")
    metrics = {k: v / images_seen for k, v in sums.items() if k != "lpips" or perceptual is not None}
    metrics.update(codebook_stats(histogram))
    metrics.update(images=images_seen, data_skipped=skipped)
    return metrics
