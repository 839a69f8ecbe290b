"""Evaluate a tokenizer on held-out shards: reconstruction quality, codebook statistics, and optionally
LPIPS, rFID (local weight files) and linear probes of the generated dataset's caption attributes."""

from __future__ import annotations

import torch
from tqdm import tqdm

from vistok.data.schema import CaptionSchema
from vistok.eval.fid import RFID
from vistok.eval.metrics import ReconstructionMetrics
from vistok.eval.probe import LinearProbe, ProbeFeatures


@torch.no_grad()
def evaluate_tokenizer(tokenizer, loader, perceptual=None, rfid: RFID | None = None,
                       probe: LinearProbe | None = None, max_batches: int | None = None,
                       device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean PSNR / SSIM (/ LPIPS) over the loader; codebook usage and perplexity over the whole set (the same
    `ReconstructionMetrics` as validation); `rfid` and `probe` (when given) see every batch and add their
    numbers at the end."""
    tokenizer.eval().to(device)
    if perceptual is not None:
        perceptual.to(device)
    reconstruction = ReconstructionMetrics(tokenizer.codebook_size)
    lpips, images_seen, skipped = 0.0, 0, 0
    for i, batch in enumerate(tqdm(loader, desc="evaluate", unit="batch")):
        if max_batches is not None and i >= max_batches:
            break
        images = batch["image"].to(device)
        skipped += int(batch.get("skipped", 0))
        recon, out = tokenizer(images)
        reconstruction.update(images, recon, out.indices)
        if perceptual is not None:
            lpips += float(perceptual(images, recon)) * images.shape[0]
        if rfid is not None:
            rfid.update(images, recon)
        if probe is not None:
            probe.update(out, batch.get("caption", []), tokenizer.codebook_sizes)
        images_seen += images.shape[0]
    if images_seen == 0:
        raise ValueError("the evaluation data yielded no images")
    metrics = reconstruction.compute()
    if perceptual is not None:
        metrics["lpips"] = lpips / images_seen
    metrics.update(images=images_seen, data_skipped=skipped)
    for extra in (rfid, probe):
        if extra is not None:
            metrics.update(extra.compute())
    return metrics


@torch.no_grad()
def collect_probe_features(tokenizer, loader, schema: CaptionSchema, max_samples: int = 5000,
                           device: str | torch.device = "cpu") -> ProbeFeatures:
    """Encode-only pass (e.g. over training shards) gathering the features a `LinearProbe` trains on."""
    tokenizer.eval().to(device)
    features = ProbeFeatures(max_samples, schema)
    for batch in tqdm(loader, desc="probe features", unit="batch"):
        out = tokenizer.encode(batch["image"].to(device))
        features.update(out, batch.get("caption", []), tokenizer.codebook_sizes)
        if features.count >= max_samples:
            break
    return features
