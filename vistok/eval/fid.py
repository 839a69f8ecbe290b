"""rFID: the Fréchet distance between feature Gaussians of real images and their reconstructions.

Features are accumulated streaming (running sums, float64), so no image or feature list is kept. Both
image sets are rounded to 8-bit levels first, as if written to PNG, the way reconstructions are usually
stored before FID tools read them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vistok.eval.features import file_digest, load_feature_extractor
from vistok.eval.recon import to_unit


class FeatureStats:
    """Running mean and covariance of (B, D) feature batches, in float64.

    Sums are taken around a fixed shift (the first batch's mean) so that the covariance does not lose
    precision to the mean when features sit far from zero.
    """

    def __init__(self):
        self.count = 0
        self.shift: torch.Tensor | None = None  # (D,)
        self.sum: torch.Tensor | None = None  # (D,)
        self.outer: torch.Tensor | None = None  # (D, D)

    def update(self, features: torch.Tensor) -> None:
        x = features.detach().to("cpu", torch.float64)  # (B, D)
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        x = x - self.shift
        self.sum += x.sum(0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.shift + self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """Unbiased (n - 1) sample covariance, (D, D)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        centred_sum = self.sum / self.count  # mean of the shifted features, (D,)
        return (self.outer - self.count * torch.outer(centred_sum, centred_sum)) / (self.count - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD (D, D) -> its symmetric square root, via eigh (rounding-error negatives clipped to 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD matrices.

    sigma1 @ sigma2 has the eigenvalues of the symmetric PSD matrix sqrt(sigma1) @ sigma2 @ sqrt(sigma1), so
    the trace is the sum of the square roots of its eigenvalues. Unlike a general sqrtm of the (non-symmetric)
    product, this stays real and accurate when the covariances are rank-deficient (fewer images than
    feature dimensions).
    """
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    values = torch.linalg.eigvalsh((middle + middle.T) / 2)
    return values.clamp_min(0).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor,
                     mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), in float64; tiny negatives -> 0.

    Args:
        mu1, mu2: (D,) feature means. sigma1, sigma2: (D, D) feature covariances.
    """
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    covariance_term = sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float((mu1 - mu2).square().sum() + covariance_term), 0.0)


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> the same range on the 256 levels a PNG would store (clamped)."""
    return (to_unit(images) * 255).round() / 127.5 - 1


class RFID:
    """rFID accumulated over an evaluation pass: `update(images, recon)` per batch, then `compute()`.

    Args:
        weights: a local feature-extractor weight file (see vistok.eval.features); missing = clear error.
    """

    name = "rfid"

    def __init__(self, weights: str | Path):
        self.weights = Path(weights)
        self.extractor = load_feature_extractor(self.weights)
        self.real, self.recon = FeatureStats(), FeatureStats()

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        self.extractor.to(images.device)
        return self.extractor(quantize_8bit(images))  # (B, D)

    def update(self, images: torch.Tensor, recon: torch.Tensor) -> None:
        self.real.update(self._features(images))
        self.recon.update(self._features(recon))

    def compute(self) -> dict[str, float]:
        real = (self.real.mean(), self.real.covariance())
        recon = (self.recon.mean(), self.recon.covariance())
        return {self.name: frechet_distance(*real, *recon)}

    def protocol(self) -> dict[str, object]:
        return {
            "implementation": f"vistok.eval.fid: {self.extractor.description}; Frechet distance in float64, "
                              "trace of sqrtm via eigh of sqrt(S1) S2 sqrt(S1)",
            "feature_weights": self.weights.name,
            "feature_weights_sha256": file_digest(self.weights),
            "images": self.real.count,
            "pixels": "real and reconstruction clamped to [-1, 1], rounded to 8-bit levels",
        }
