"""The image-error cost model: replayed runs are exact, runs telescope, and predicted errors rank schedules."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mpsearch.allocation.cache_scheduler import make_schedule, schedule_error
from mpsearch.cache_units import get_unit
from mpsearch.errors import UsageError
from mpsearch.models import get_denoiser
from mpsearch.profiling.cache_costs import measure_costs, measure_segment_errors, segment_increments
from mpsearch.runtime.cache_hooks import FeatureCacheConfig, apply_feature_cache
from mpsearch.runtime.generation import generate

S = 8
LABELS = (1, 4)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many tiny generations: one thread is faster on a shared machine, and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image_mse(pipe, unit, compute, seed=0):
    ref = generate(pipe, LABELS, seed, S).astype(np.float64)
    h = apply_feature_cache(get_denoiser(pipe), FeatureCacheConfig(unit, tuple(compute)))
    try:
        img = generate(pipe, LABELS, seed, S).astype(np.float64)
    finally:
        h.remove()
    return float(np.mean((img - ref) ** 2))


def test_segment_increments_telescope():
    rng = np.random.default_rng(0)
    E = np.triu(rng.random((7, 7)), 2)
    E = np.maximum.accumulate(E, axis=1) * (np.triu(np.ones((7, 7)), 2) > 0)  # non-decreasing runs
    C = segment_increments(E)
    assert (C >= 0).all() and np.allclose(np.tril(C), 0) and np.allclose(C[:, -1], 0)
    for p in range(5):
        for t in range(p + 2, 7):
            compute = [not p < u < t for u in range(7)]
            assert schedule_error(C, compute) == pytest.approx(E[p, t])  # one run: exactly its measured error
    # a run that measured lower than a shorter one is clipped: increments never go negative
    E2 = np.zeros((5, 5))
    E2[0, 2], E2[0, 3], E2[0, 4] = 2.0, 1.0, 3.0
    assert segment_increments(E2)[0].tolist() == [0.0, 2.0, 0.0, 1.0, 0.0]


def test_replayed_runs_equal_real_cached_generations(any_pipe):
    unit = get_unit(get_denoiser(any_pipe))
    E = measure_segment_errors(any_pipe, unit, S, labels=LABELS, seeds=(0,), warmup=2)
    assert np.allclose(E[0], 0) and np.allclose(np.tril(E, 1), 0)
    for p, t in ((1, 4), (3, 7), (5, 7)):
        compute = [not p < u < t for u in range(S)]
        assert E[p, t] == pytest.approx(_image_mse(any_pipe, unit, compute), rel=1e-6, abs=1e-12)
    assert E[1, 7] > 0


def test_predicted_error_ranks_random_schedules(unet_pipe):
    """Across random schedules, the DP's objective (sum of costs) orders the measured image errors."""
    unit = get_unit(get_denoiser(unet_pipe))
    C = measure_costs(unet_pipe, unit, S, labels=LABELS, seeds=(0,))
    rng = np.random.default_rng(1)
    pred, real = [], []
    for _ in range(10):
        k = int(rng.integers(3, 7))
        extra = rng.choice(np.arange(2, S - 1), k - 3, replace=False)
        compute = [t < 2 or t == S - 1 or t in extra for t in range(S)]
        pred.append(schedule_error(C, compute))
        real.append(_image_mse(unet_pipe, unit, compute, seed=7))  # a seed the costs were not measured on
    assert spearmanr(pred, real).correlation > 0.6
    # and the DP's pick is at least as good as the uniform interval's, measured
    dp, uni = (make_schedule(m, C, 4, warmup=2) for m in ("dp", "uniform"))
    assert _image_mse(unet_pipe, unit, dp.compute, 7) <= _image_mse(unet_pipe, unit, uni.compute, 7) * 1.05


def test_unknown_target():
    with pytest.raises(UsageError, match="image, output, feature"):
        measure_costs(None, None, 4, target="psnr")
