"""Metrics on inputs whose values can be computed by hand."""

import numpy as np
import pytest
import torch

from mpsearch.errors import UsageError
from mpsearch.metrics import (available_metrics, class_agreement, cosine, frechet_distance, get_metric, mse, psnr,
                              rel_mse, sqnr, ssim)


def test_layer_metrics_by_hand():
    ref = torch.tensor([3.0, 4.0])          # ||ref||^2 = 25
    out = torch.tensor([3.0, 5.0])          # error^2 = 1
    assert rel_mse(ref, out) == pytest.approx(1 / 25)
    assert sqnr(ref, out) == pytest.approx(10 * np.log10(25))
    assert cosine(ref, out) == pytest.approx((9 + 20) / (5 * np.sqrt(34)))
    assert sqnr(ref, ref) == 200.0 and rel_mse(ref, ref) == 0.0 and cosine(ref, ref) == pytest.approx(1.0)


def test_image_metrics_by_hand():
    a = np.zeros((2, 8, 8, 1), np.float32)
    b = a + 0.1
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == 100.0
    assert ssim(b, b) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(b + rng.normal(0, 0.2, b.shape), 0, 1)
    assert ssim(b, noisy) < ssim(b, np.clip(b + rng.normal(0, 0.02, b.shape), 0, 1)) < 1.0
    # channels-first and channels-last agree
    assert mse(a.transpose(0, 3, 1, 2), b.transpose(0, 3, 1, 2)) == pytest.approx(mse(a, b))


def test_frechet_and_agreement():
    x = np.random.default_rng(1).normal(size=(200, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, x + 1.0) == pytest.approx(4.0)  # a shift by 1 in 4 dims: ||mu_a - mu_b||^2
    assert class_agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    with pytest.raises(UsageError):
        frechet_distance(x[:1], x)


def test_registry():
    assert {"rel_mse", "sqnr", "cosine"} <= set(available_metrics("layer"))
    assert get_metric("ssim").higher_is_better and not get_metric("mse").higher_is_better
    with pytest.raises(UsageError, match="unknown metric 'nope'"):
        get_metric("nope")
