"""LPIPS from local files: zero for identical images, positive otherwise, clear errors for missing files."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import write_lpips_weights
from vistok.losses.perceptual import LPIPS


@pytest.fixture
def weight_files(tmp_path):
    return write_lpips_weights(tmp_path)


def test_lpips_zero_for_identical_and_positive_for_different(weight_files):
    metric = LPIPS(*map(str, weight_files))
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(metric(a, a)) == pytest.approx(0.0, abs=1e-7)
    assert float(metric(a, torch.rand(2, 3, 32, 32) * 2 - 1)) > 0


def test_lpips_gives_gradient_to_reconstruction(weight_files):
    metric = LPIPS(*map(str, weight_files))
    recon = torch.zeros(1, 3, 32, 32, requires_grad=True)
    metric(torch.rand(1, 3, 32, 32), recon).backward()
    assert recon.grad.abs().sum() > 0 and not any(p.requires_grad for p in metric.parameters())


def test_missing_weight_file_is_named(weight_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LPIPS(str(tmp_path / "nope.pth"), str(weight_files[1]))
