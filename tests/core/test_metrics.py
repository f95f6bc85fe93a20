"""Metrics on inputs whose values can be computed by hand."""

import numpy as np
import pytest
import torch

from mpsearch.errors import UsageError
from mpsearch.metrics import (
    available_metrics,
    class_agreement,
    cosine,
    frechet_distance,
    get_metric,
    mse,
    psnr,
    rel_mse,
    sqnr,
    ssim,
)


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


def test_registry_knows_profile_statistics_errors_and_normalisation():
    from mpsearch.metrics import end_to_end_metrics, normalize, profile_metrics

    assert profile_metrics() == ("rel_mse", "sqnr", "cosine", "gn")
    # one (layer, format, step) with sums err2=1, ref2=4, out2=9, dot=5; gn's sensitivity sums g2=6 over n=3
    stats = np.array([1.0, 4.0, 9.0, 5.0]).reshape(1, 1, 1, 4)
    sens = np.array([6.0, 3.0]).reshape(1, 1, 2)
    by_hand = {"rel_mse": 0.25, "sqnr": 6.020599913279624, "cosine": 5 / 6, "gn": 2.0}
    for name, want in by_hand.items():
        assert get_metric(name).from_stats(stats, sens).item() == pytest.approx(want, rel=1e-12)
    assert get_metric("gn").needs_sensitivity and not get_metric("sqnr").needs_sensitivity
    # errors: 20 dB is a relative squared error of 0.01; similarities become 1 - value; drops need fp's score
    assert get_metric("sqnr").error(20.0) == pytest.approx(0.01)
    assert get_metric("psnr").error(30.0) == pytest.approx(0.001)
    assert get_metric("cosine").error(0.9) == pytest.approx(0.1)
    assert get_metric("ssim").error(0.75) == pytest.approx(0.25)
    assert get_metric("rel_mse").error(0.3) == pytest.approx(0.3)
    assert get_metric("condition").error(0.6, 0.8) == pytest.approx(0.2)
    with pytest.raises(UsageError, match="reference"):
        get_metric("class_agreement").error(0.5)
    assert get_metric("frechet").error(7.5) == pytest.approx(7.5)
    assert end_to_end_metrics() == {"sqnr": "quality", "psnr": "quality", "ssim": "content", "frechet": "quality",
                                    "condition": "content", "class_agreement": "content"}
    got = normalize(np.array([0.0, 2.0, np.inf, 4.0]))
    assert got[0] == 0 and got[1] == 0.5 and np.isinf(got[2]) and got[3] == 1.0
    assert (get_metric("sqnr").normalize(np.zeros(3)) == 0).all()


def test_end_to_end_damage_reads_the_registry():
    from mpsearch.profiling.endtoend.scores import METRIC_KIND, damage

    assert damage("ssim", 0.9, 1.0) == pytest.approx(0.1)
    assert damage("psnr", 20.0, 99.0) == pytest.approx(0.01)
    assert damage("class_agreement", 0.7, 0.9) == pytest.approx(0.2)
    assert damage("frechet", 3.0, 0.0) == pytest.approx(3.0)
    assert set(METRIC_KIND) == {"ssim", "condition", "class_agreement", "psnr", "sqnr", "frechet"}
    with pytest.raises(UsageError, match="end-to-end metric"):
        damage("rel_mse", 0.1, 0.0)


def test_nominal_bits_come_from_the_formats():
    from mpsearch.allocation.baselines import NOMINAL_BITS

    assert NOMINAL_BITS == {"int8": 8.0, "nvfp4": 4.0, "int4": 4.0, "int4-g64": 4.0, "int4-g32": 4.0}
