"""The cache schedulers: DP against brute force on every small case, baselines, budgets, errors."""

import itertools

import numpy as np
import pytest

from mpsearch.allocation.cache_scheduler import (
    ScheduleProblem,
    full_computations_for_speedup,
    ideal_speedup,
    is_feasible,
    make_schedule,
    schedule_bruteforce,
    schedule_dp,
    schedule_error,
    schedule_threshold,
    schedule_uniform,
)
from mpsearch.errors import InfeasibleError, UsageError


def _cases(max_steps=12):
    rng = np.random.default_rng(0)
    for S in range(1, max_steps + 1):
        for W, M in itertools.product((1, 2, 3), (None, 1, 2, 4)):
            C = np.triu(rng.random((S, S)) * rng.choice([0.01, 1.0, 100.0]), 1)
            yield S, W, M, C


def _any_feasible(S, K, W, M):
    return any(_ok(S, W, M, steps) for steps in itertools.combinations(range(S), K))


def _ok(S, W, M, steps):
    compute = [t in steps for t in range(S)]
    if not all(compute[:W]) or not compute[-1]:
        return False
    run = 0
    for c in compute:
        run = 0 if c else run + 1
        if M is not None and run > M:
            return False
    return True


def test_dp_equals_bruteforce_on_every_small_case():
    n = infeasible = 0
    for S, W, M, C in _cases(12):
        for K in range(1, S + 1):
            try:
                p = ScheduleProblem(C, K, W, M)
            except InfeasibleError:
                infeasible += 1
                assert not _any_feasible(S, K, W, M)  # the oracle agrees: no schedule exists
                continue
            dp, bf = schedule_dp(p), schedule_bruteforce(p)
            assert dp.compute == bf.compute, (S, W, M, K)
            assert dp.error == pytest.approx(bf.error, rel=1e-12, abs=1e-15)
            assert dp.full_computations == K and is_feasible(p, dp.compute)
            assert dp.error == pytest.approx(schedule_error(C, dp.compute))
            n += 1
    assert n > 500 and infeasible > 10


def test_infeasible_k_names_the_smallest_feasible():
    C = np.ones((12, 12))
    with pytest.raises(InfeasibleError, match="smallest feasible number is 5"):
        ScheduleProblem(C, 4, warmup=2, max_reuse=3)  # 10 steps after warm-up, runs of <= 3: 3 more computed
    p = ScheduleProblem(C, 5, warmup=2, max_reuse=3)
    assert is_feasible(p, schedule_dp(p).compute)
    assert not _any_feasible(12, 4, 2, 3) and _any_feasible(12, 5, 2, 3)  # the oracle agrees


def test_baselines_are_feasible_and_never_beat_dp():
    for S, W, M, C in _cases(10):
        for K in range(1, S + 1):
            try:
                p = ScheduleProblem(C, K, W, M)
            except InfeasibleError:
                continue
            dp = schedule_dp(p)
            for sched in (schedule_uniform(p), schedule_threshold(p)):
                assert is_feasible(p, sched.compute), (sched.method, S, W, M, K, sched.compute)
                assert dp.error <= sched.error + 1e-12


def test_uniform_and_threshold_shapes():
    S = 20
    p = ScheduleProblem(np.triu(np.ones((S, S)), 1), 6, warmup=2)
    u = schedule_uniform(p)
    assert [t for t, c in enumerate(u.compute) if c] == [0, 1, 6, 10, 14, 19]
    # threshold: the change grows with the distance; reuse stops where it exceeds tau
    idx = np.arange(S)
    C = np.triu(np.maximum(idx[None, :] - idx[:, None], 0).astype(float) ** 2, 1)
    t = schedule_threshold(ScheduleProblem(C, 6, warmup=2))
    assert t.full_computations == 6 and t.info["threshold"] >= 0


def test_all_steps_computed_has_zero_error():
    C = np.random.default_rng(1).random((8, 8))
    for method in ("dp", "uniform", "threshold", "bruteforce"):
        s = make_schedule(method, C, 8, warmup=2)
        assert s.compute == (True,) * 8 and s.error == 0.0


@pytest.mark.parametrize("bad,match", [
    (dict(cost=np.ones((3, 4)), full_computations=2), "square"),
    (dict(cost=np.full((3, 3), np.nan), full_computations=2), "finite"),
    (dict(cost=np.ones((3, 3)), full_computations=0), "full_computations"),
    (dict(cost=np.ones((3, 3)), full_computations=2, warmup=0), "warmup"),
    (dict(cost=np.ones((3, 3)), full_computations=2, max_reuse=0), "max_reuse"),
])
def test_bad_problems_are_usage_errors(bad, match):
    with pytest.raises(UsageError, match=match):
        ScheduleProblem(**bad)


def test_unknown_method():
    with pytest.raises(UsageError, match="unknown cache method 'fast'"):
        make_schedule("fast", np.ones((3, 3)), 2)


def test_speedup_budget():
    assert ideal_speedup(10, 20, 1.0) == 2.0
    assert full_computations_for_speedup(2.0, 20, 1.0) == 10
    k = full_computations_for_speedup(1.5, 20, 0.6)
    assert ideal_speedup(k, 20, 0.6) >= 1.5 > ideal_speedup(k + 1, 20, 0.6)
    with pytest.raises(InfeasibleError, match="out of reach"):
        full_computations_for_speedup(3.0, 20, 0.5)
    with pytest.raises(UsageError, match="speedup"):
        full_computations_for_speedup(0.5, 20, 0.5)
