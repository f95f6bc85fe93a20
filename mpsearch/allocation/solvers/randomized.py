"""Baseline solver "random": a random feasible allocation that uses the budget, for benchmarks.

1. Each decision takes an allowed format at random.
2. While a constraint is over its limit, a random decision whose move lowers the total overrun moves to
   the allowed format that lowers it most (overruns normalized as in "greedy").
3. Then, in a random order, each decision moves up to a random allowed format with more bytes that keeps
   every constraint (so the plan fills the budget, as a comparison at equal bytes needs).

Deterministic for a given ``seed`` (a seeded generator); status "feasible". It knows nothing of the
costs: it is the floor any real solver must beat at equal bytes.
"""

from __future__ import annotations

import numpy as np

from mpsearch.allocation.solvers.base import BaseSolver, NoSolutionFoundError
from mpsearch.allocation.solvers.feasibility import resource_tables
from mpsearch.allocation.solvers.problem import Problem
from mpsearch.allocation.solvers.registry import register_solver
from mpsearch.errors import UsageError


@register_solver
class RandomSolver(BaseSolver):
    """Random feasible allocation (see the module docstring). Option: ``seed`` (default 0)."""

    name = "random"

    def __init__(self, *, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UsageError(f"random: seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)

    def _solve(self, problem: Problem) -> tuple[np.ndarray, bool]:
        rng = np.random.default_rng(self.seed)
        dec = problem.decisions
        allowed = dec.allowed
        tables, cap = resource_tables(problem)
        use = np.where(allowed[None], tables, 0.0)  # (R, D, F)
        span = (np.where(allowed, use, -np.inf).max(axis=2) - np.where(allowed, use, np.inf).min(axis=2)).sum(axis=1)
        norm = np.where(span > 0, span, 1.0)
        rows = np.arange(dec.count)

        cur = np.array([rng.choice(np.flatnonzero(allowed[d])) for d in range(dec.count)], dtype=np.int64)

        def total() -> np.ndarray:
            return use[:, rows, cur].sum(axis=1)

        for _ in range(10 * allowed.size + 10):
            now = total()
            over = np.maximum(now - cap, 0.0)
            if not over.any():
                break
            # overrun after each move (R, D, F), normalized and summed: lower is better
            after = np.maximum(now[:, None, None] + use - use[:, rows, cur][:, :, None] - cap[:, None, None], 0.0)
            score = np.where(allowed, (after / norm[:, None, None]).sum(axis=0), np.inf)
            gain = (over / norm).sum() - score.min(axis=1)
            movable = np.flatnonzero(gain > 1e-12)
            if not len(movable):
                raise NoSolutionFoundError("random found no plan meeting every constraint (it is a baseline); "
                                           "use --solver cbc to find one or prove there is none")
            d = int(rng.choice(movable))
            cur[d] = int(np.argmin(score[d]))
        else:  # pragma: no cover - each move strictly lowers the overrun
            raise NoSolutionFoundError("random did not converge; use --solver cbc")

        moved = problem.budget_bytes is not None
        while moved:  # fill the budget: move up where it still fits, until nothing can
            moved = False
            for d in rng.permutation(dec.count):
                now = total()
                delta = use[:, d, :] - use[:, d, cur[d]][:, None]  # (R, F)
                fits = allowed[d] & (now[:, None] + delta <= cap[:, None]).all(axis=0)
                bigger = fits & (dec.nbytes[d] > dec.nbytes[d, cur[d]])
                if bigger.any():
                    cur[d] = int(rng.choice(np.flatnonzero(bigger)))
                    moved = True
        return dec.expand(cur), False
