"""Cache schedulers: which denoising steps compute the cached unit in full and which reuse its features.

Every scheduler answers the same question (:class:`ScheduleProblem` -> :class:`Schedule`): given a cost matrix
``C[s, u]`` = the error of reusing at step ``u`` the features last computed at step ``s`` (``s < u``), choose
exactly ``K`` steps to compute so that

* steps ``0 .. warmup-1`` and the last step are computed,
* no more than ``max_reuse`` consecutive steps reuse (``None``: no limit),

and the total error ``sum over reuse steps u of C[last computed step before u, u]`` is small.

* ``"dp"``: exact dynamic programming (CacheQuant / CEM): ``D[k][t]`` = least error with ``k`` full
  computations among steps ``0..t``, the last at ``t``;
  ``D[k][t] = min_p D[k-1][p] + sum_{p<u<t} C[p, u]`` over the previous computed step ``p`` with
  ``t - p - 1 <= max_reuse``. O(K * S^2).
* ``"uniform"``: the computed steps evenly spaced after the warm-up (DeepCache's fixed interval).
* ``"threshold"``: reuse while the accumulated cost since the last computation (``sum C[last, u]`` over the
  reuses so far, this step included) stays under a threshold (first-block cache / TeaCache accumulate the
  change the same way), with the threshold calibrated on the costs so that exactly ``K`` steps compute.
* ``"bruteforce"``: enumerates every feasible schedule; the test oracle (small ``S`` only).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mpsearch.errors import InfeasibleError, UsageError

METHODS = ("dp", "uniform", "threshold")


@dataclass(frozen=True)
class ScheduleProblem:
    """Costs and constraints of one scheduling problem.

    cost: (S, S) float array; ``cost[s, u]`` (``s < u``) is the error of reusing step ``s``'s features at ``u``.
    full_computations: K, the number of steps computed in full (``warmup + 1 <= K <= S``, or ``K = S``).
    warmup: the first ``warmup`` steps are always computed (>= 1: step 0 has no cache to reuse).
    max_reuse: at most this many consecutive reuses (None: no limit).
    """

    cost: np.ndarray
    full_computations: int
    warmup: int = 2
    max_reuse: int | None = None

    def __post_init__(self):
        c = np.array(self.cost, dtype=float)
        if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 1:
            raise UsageError(f"cost must be a square (steps, steps) matrix, got shape {c.shape}")
        iu = np.triu_indices(c.shape[0], 1)
        if not np.isfinite(c[iu]).all() or (c[iu] < 0).any():
            raise UsageError("cost[s, u] for s < u must be finite and >= 0; measure the costs again")
        c.setflags(write=False)
        object.__setattr__(self, "cost", c)
        S = c.shape[0]
        if not isinstance(self.warmup, (int, np.integer)) or self.warmup < 1:
            raise UsageError(f"warmup must be an integer >= 1 (step 0 has nothing to reuse), got {self.warmup!r}")
        if self.max_reuse is not None and (not isinstance(self.max_reuse, (int, np.integer)) or self.max_reuse < 1):
            raise UsageError(f"max_reuse must be an integer >= 1 or None, got {self.max_reuse!r}")
        k = self.full_computations
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= S:
            raise UsageError(f"full_computations must be an integer in 1..{S} (the number of steps), got {k!r}")
        if k < self.min_full_computations:
            raise InfeasibleError(
                f"{k} full computations out of {S} steps cannot satisfy warmup={self.warmup}, the last step "
                f"and max_reuse={self.max_reuse}; the smallest feasible number is {self.min_full_computations}")

    @property
    def steps(self) -> int:
        """The number of denoising steps (rows of ``cost``)."""
        return self.cost.shape[0]

    @property
    def forced(self) -> tuple[int, ...]:
        """Steps that are always computed: the warm-up steps and the last step."""
        S = self.steps
        return tuple(sorted(set(range(min(self.warmup, S))) | {S - 1}))

    @property
    def min_full_computations(self) -> int:
        """The fewest full computations that keep the warm-up, the last step and ``max_reuse``."""
        S, W = self.steps, min(self.warmup, self.steps)
        free = S - W  # steps after the warm-up; the last of them is forced
        if free <= 0:
            return S
        m = self.max_reuse
        # after the warm-up, each computed step closes a run of at most m reuses
        return W + (1 if m is None else max(1, math.ceil(free / (m + 1))))


@dataclass(frozen=True)
class Schedule:
    """A computed/reused decision per step, its predicted error and the method that chose it."""

    compute: tuple[bool, ...]
    error: float
    method: str
    info: dict = field(default_factory=dict)

    @property
    def full_computations(self) -> int:
        """How many steps compute in full (the rest reuse cached features)."""
        return sum(self.compute)

    @property
    def steps(self) -> int:
        """The number of denoising steps the schedule covers."""
        return len(self.compute)

    def source(self) -> list[int]:
        """For each step, the step whose features it uses (itself where it computes)."""
        out, last = [], 0
        for t, c in enumerate(self.compute):
            last = t if c else last
            out.append(last)
        return out


def schedule_error(cost: np.ndarray, compute: Sequence[bool] | np.ndarray) -> float:
    """Total error of a computed/reused pattern under ``cost`` (step 0 must compute)."""
    compute = list(compute)
    if not compute or not compute[0]:
        raise UsageError("step 0 must be computed: there is nothing to reuse before it")
    total, last = 0.0, 0
    for t, c in enumerate(compute):
        if c:
            last = t
        else:
            total += float(cost[last, t])
    return total


def is_feasible(problem: ScheduleProblem, compute: Sequence[bool] | np.ndarray) -> bool:
    """Whether ``compute`` meets every constraint of ``problem`` (K, warm-up, last step, max_reuse)."""
    compute = list(compute)
    if len(compute) != problem.steps or sum(compute) != problem.full_computations:
        return False
    if not all(compute[t] for t in problem.forced):
        return False
    run = 0
    for c in compute:
        run = 0 if c else run + 1
        if problem.max_reuse is not None and run > problem.max_reuse:
            return False
    return True


def _from_steps(problem: ScheduleProblem, steps, method: str, **info) -> Schedule:
    compute = [False] * problem.steps
    for t in steps:
        compute[int(t)] = True
    return Schedule(tuple(compute), schedule_error(problem.cost, compute), method, info)


# ------------------------------------------------------------------------------------------------ schedulers

def schedule_dp(problem: ScheduleProblem) -> Schedule:
    """The least-error schedule with exactly K full computations (exact dynamic programming)."""
    C, S, K, W = problem.cost, problem.steps, problem.full_computations, min(problem.warmup, problem.steps)
    M = S if problem.max_reuse is None else problem.max_reuse
    # run[p, t] = error of reusing p's features at every step strictly between p and t
    run = np.zeros((S, S + 1))
    for p in range(S):
        acc = 0.0
        for t in range(p + 1, S + 1):
            run[p, t] = acc
            if t < S:
                acc += C[p, t]
    INF = math.inf
    D = np.full((K + 1, S), INF)
    prev = np.full((K + 1, S), -1, dtype=int)
    for t in range(W):  # warm-up steps: all computed, no error
        D[t + 1, t] = 0.0
    for k in range(2, K + 1):
        for t in range(W, S):
            best, arg = INF, -1
            for p in range(max(W - 1, t - M - 1), t):
                v = D[k - 1, p]
                if v == INF:
                    continue
                v = v + run[p, t]
                if v < best:
                    best, arg = v, p
            D[k, t], prev[k, t] = best, arg
    if not math.isfinite(D[K, S - 1]):  # the constructor already checked feasibility
        raise InfeasibleError(f"no schedule with {K} full computations meets the constraints; "
                              f"use at least {problem.min_full_computations}")
    steps, k, t = [], K, S - 1
    while t >= 0 and k >= 1:
        steps.append(t)
        t, k = (prev[k, t], k - 1) if t >= W else (t - 1, k - 1)
    return _from_steps(problem, sorted(steps), "dp")


def schedule_uniform(problem: ScheduleProblem) -> Schedule:
    """K computed steps: the warm-up, then the rest evenly spaced up to the last step."""
    S, K, W = problem.steps, problem.full_computations, min(problem.warmup, problem.steps)
    if K >= S:
        return _from_steps(problem, range(S), "uniform")
    extra = K - W  # computed steps after the warm-up, the last step included
    tail = np.round(np.linspace(W - 1, S - 1, extra + 1)[1:]).astype(int)
    steps = sorted(set(range(W)) | set(tail.tolist()))
    if len(steps) != K or not is_feasible(problem, [t in steps for t in range(S)]):
        raise InfeasibleError(f"no evenly spaced schedule with {K} computations meets max_reuse="
                              f"{problem.max_reuse}; use more full computations")
    return _from_steps(problem, steps, "uniform")


def _threshold_steps(problem: ScheduleProblem, tau: float) -> list[int]:
    C, S, W = problem.cost, problem.steps, min(problem.warmup, problem.steps)
    M = S if problem.max_reuse is None else problem.max_reuse
    steps, last, run, acc = list(range(W)), W - 1, 0, 0.0
    for t in range(W, S):
        acc += C[last, t]
        if t == S - 1 or acc > tau or run >= M:
            steps.append(t)
            last, run, acc = t, 0, 0.0
        else:
            run += 1
    return steps


def schedule_threshold(problem: ScheduleProblem) -> Schedule:
    """Reuse while the accumulated cost since the last computation, ``sum C[last, u]`` for ``last < u <= t``,
    stays <= tau; tau calibrated to hit K.

    The number of computations falls as tau rises; the smallest tau giving at most K computations is found
    among the candidate values (every run's accumulated cost), and if that overshoots below K, the missing computations
    are taken at the steps where the change is largest (the rule's next candidates).
    """
    S, K = problem.steps, problem.full_computations
    runs = np.cumsum(np.triu(problem.cost, 1), axis=1)  # runs[p, t] = sum_{p<u<=t} C[p, u]
    iu = np.triu_indices(S, 1)
    taus = np.unique(np.concatenate([[-1.0], runs[iu]]))
    lo, hi = 0, len(taus) - 1  # count(taus[i]) is non-increasing in i
    if len(_threshold_steps(problem, taus[hi])) > K:
        raise InfeasibleError(f"the threshold rule cannot go down to {K} computations under max_reuse="
                              f"{problem.max_reuse}; use more full computations")
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_threshold_steps(problem, taus[mid])) <= K:
            hi = mid
        else:
            lo = mid + 1
    tau = float(taus[lo])
    steps = _threshold_steps(problem, tau)
    while len(steps) < K:  # fill up greedily: compute where the reused features are most out of date
        sched = [t in steps for t in range(S)]
        src = _from_steps(problem, steps, "threshold").source()
        cands = [(problem.cost[src[t], t], t) for t in range(S) if not sched[t]]
        steps = sorted(steps + [max(cands)[1]])
    return _from_steps(problem, steps, "threshold", threshold=tau)


def schedule_bruteforce(problem: ScheduleProblem) -> Schedule:
    """Enumerate every feasible schedule (the oracle for tests; S <= 20)."""
    S, K = problem.steps, problem.full_computations
    if S > 20:
        raise UsageError(f"brute force enumerates 2^{S} schedules; use it for at most 20 steps")
    forced = set(problem.forced)
    free = [t for t in range(S) if t not in forced]
    best = None
    for extra in itertools.combinations(free, K - len(forced)):
        compute = [t in forced or t in extra for t in range(S)]
        if not is_feasible(problem, compute):
            continue
        err = schedule_error(problem.cost, compute)
        if best is None or err < best[0]:
            best = (err, compute)
    if best is None:
        raise InfeasibleError(f"no schedule with {K} full computations meets the constraints")
    return Schedule(tuple(best[1]), best[0], "bruteforce")


_SCHEDULERS = {"dp": schedule_dp, "uniform": schedule_uniform, "threshold": schedule_threshold,
               "bruteforce": schedule_bruteforce}


def make_schedule(method: str, cost: np.ndarray, full_computations: int, *, warmup: int = 2,
                  max_reuse: int | None = None) -> Schedule:
    """Schedule with ``method`` (dp, uniform, threshold, bruteforce) under the given constraints."""
    if method not in _SCHEDULERS:
        raise UsageError(f"unknown cache method {method!r}; expected one of {', '.join(_SCHEDULERS)}")
    return _SCHEDULERS[method](ScheduleProblem(np.asarray(cost, dtype=float), int(full_computations),
                                               warmup, max_reuse))


def full_computations_for_speedup(speedup: float, steps: int, share: float) -> int:
    """The most full computations K (the best quality) whose ideal speedup ``S / (K + (S - K) * (1 - share))``
    still reaches ``speedup``, where ``share`` is the fraction of a step's compute the cached unit skips."""
    if isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not math.isfinite(speedup) or speedup < 1:
        raise UsageError(f"speedup must be a number >= 1, got {speedup!r}")
    if not 0 < share <= 1:
        raise UsageError(f"the cached unit's share of compute must be in (0, 1], got {share!r}")
    for k in range(steps, 0, -1):
        if ideal_speedup(k, steps, share) >= speedup - 1e-12:
            return k
    raise InfeasibleError(f"speedup {speedup} is out of reach: the cached unit is {share:.0%} of a step, so "
                          f"{steps} steps give at most {ideal_speedup(1, steps, share):.2f}x; ask for less")


def ideal_speedup(k: int, steps: int, share: float) -> float:
    """Speedup if reused steps cost exactly ``1 - share`` of a full step and nothing else changes."""
    return steps / (k + (steps - k) * (1.0 - share))
