"""Exact solver "bruteforce": enumerate every assignment of the decisions. The oracle of the tests.

Vectorized over chunks of assignments, in lexicographic order (decision 0 most significant); the first
assignment with the lowest objective wins, so the answer is deterministic. Refuses problems with more than
``max_combinations`` assignments (default 1,000,000).
"""

from __future__ import annotations

import math

import numpy as np

from mpsearch.allocation.solvers.base import BaseSolver, SolverError
from mpsearch.allocation.solvers.feasibility import extra_tolerance
from mpsearch.allocation.solvers.problem import Problem
from mpsearch.allocation.solvers.registry import register_solver
from mpsearch.errors import UsageError

_CHUNK = 1 << 16


@register_solver
class BruteForceSolver(BaseSolver):
    """Exact by enumeration, for small problems. Option: ``max_combinations`` (default 1,000,000)."""

    name = "bruteforce"

    def __init__(self, *, max_combinations: int = 1_000_000):
        if isinstance(max_combinations, bool) or not isinstance(max_combinations, int) or max_combinations < 1:
            raise UsageError(f"bruteforce: max_combinations must be an integer >= 1, got {max_combinations!r}")
        self.max_combinations = max_combinations

    def _solve(self, problem: Problem) -> tuple[np.ndarray, bool]:
        dec = problem.decisions
        options = [np.flatnonzero(dec.allowed[d]) for d in range(dec.count)]
        radices = np.array([len(o) for o in options], dtype=np.int64)
        total = math.prod(int(r) for r in radices)
        if total > self.max_combinations:
            raise UsageError(
                f"bruteforce would enumerate {total:,} assignments, more than its limit of {self.max_combinations:,}; "
                "use --solver cbc, which is exact and fast at any size"
            )
        width = int(radices.max()) if len(radices) else 1
        table = np.zeros((dec.count, width), dtype=np.int64)  # table[d, i] = i-th allowed format of d
        for d, o in enumerate(options):
            table[d, : len(o)] = o
        strides = np.ones(dec.count, dtype=np.int64)
        for d in range(dec.count - 2, -1, -1):
            strides[d] = strides[d + 1] * radices[d + 1]

        cap = None if problem.budget_bytes is None else problem.budget_bytes - problem.fixed_bytes
        limits = []
        for con in problem.extra:
            scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
            limits.append(con.rhs + extra_tolerance(con.rhs, scale) / 2)

        best: tuple[float, np.ndarray] | None = None
        min_bytes_under_extra: int | None = None
        rows = np.arange(dec.count)
        for lo in range(0, total, _CHUNK):
            idx = np.arange(lo, min(lo + _CHUNK, total), dtype=np.int64)
            formats = table[rows, (idx[:, None] // strides) % radices]  # (n, D)
            cost = np.zeros(len(idx))
            nbytes = np.zeros(len(idx), dtype=np.int64)
            meets_extra = np.ones(len(idx), dtype=bool)
            for d in range(dec.count):  # fixed summation order: deterministic
                cost += dec.cost[d, formats[:, d]]
                nbytes += dec.nbytes[d, formats[:, d]]
            for k, limit in enumerate(limits):
                value = np.zeros(len(idx))
                for d in range(dec.count):
                    value += dec.extra[k, d, formats[:, d]]
                meets_extra &= value <= limit
            if meets_extra.any():
                smallest = int(nbytes[meets_extra].min()) + problem.fixed_bytes
                min_bytes_under_extra = (smallest if min_bytes_under_extra is None
                                         else min(min_bytes_under_extra, smallest))
            feasible = meets_extra if cap is None else meets_extra & (nbytes <= cap)
            if feasible.any():
                i = int(np.argmin(np.where(feasible, cost, np.inf)))
                if best is None or cost[i] < best[0]:
                    best = (float(cost[i]), formats[i].copy())
        if best is None:
            if not problem.extra:
                raise SolverError("bruteforce found no assignment within a budget it was told is feasible; "
                                  "this is a bug")
            raise self._joint_infeasible_error(problem, min_bytes_under_extra)
        return dec.expand(best[1]), True
