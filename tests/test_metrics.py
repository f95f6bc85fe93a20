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
    # channels-first and channels-last agree
    assert mse(a.transpose(0, 3, 1, 2), b.transpose(0, 3, 1, 2)) == pytest.approx(mse(a, b))



@pytest.mark.parametrize("window, sigma", [(11, 1.5), (7, 0.8)])
@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(window, sigma, channels):
    """SSIM against scikit-image's ``structural_similarity`` with the same settings: a Gaussian window whose
    taps scikit-image derives from sigma (truncated at 3.5 sigma: 11 taps for 1.5, 7 for 0.8), population
    covariances, data range 1, and the mean over the region the window fits in (scikit-image crops it)."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    ref = rng.random((3, 16, 20, channels))
    ref[1] = np.linspace(0, 1, 20)[None, :, None]  # a smooth image, and a noisy copy of each
    out = np.clip(ref + rng.normal(0, [[[[0.02]]], [[[0.1]]], [[[0.3]]]], ref.shape), 0, 1)
    expected = [structural_similarity(r, o, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                      data_range=1.0, channel_axis=-1) for r, o in zip(ref, out)]
    got = ssim(ref.astype(np.float32), out.astype(np.float32), window=window, sigma=sigma, per_image=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert ssim(ref, out, window=window, sigma=sigma) == pytest.approx(np.mean(expected), rel=1e-4)
    assert expected[0] > expected[2]  # the images differ enough for the comparison to mean something


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
