"""Heuristic solver "greedy": downgrade, cheapest first, until every constraint holds; then win back.

1. Start from each decision's cheapest-cost format (the unconstrained optimum).
2. While a constraint is over its limit: among all moves "decision d takes format g instead", take the one
   with the smallest cost increase per unit of overrun removed (for the byte budget alone: per byte saved,
   counting only the bytes still needed), ties to the move that removes more overrun, then the lower
   (decision, format). With extra constraints the overruns are summed, each normalized by its overrun at
   the start (or by its range when it starts within its limit).
3. While some move lowers the objective and keeps every constraint, take the one that lowers it most
   (this wins back what the last, overshooting downgrades gave away).

Deterministic; status "feasible" (no optimality proof). With the byte budget alone it always finds a plan
when one exists; with extra constraints it may give up (NoSolutionFoundError) where an exact solver succeeds.
"""

from __future__ import annotations

import numpy as np

from mpsearch.allocation.solvers.base import BaseSolver, NoSolutionFoundError, SolverError
from mpsearch.allocation.solvers.feasibility import resource_tables
from mpsearch.allocation.solvers.problem import Problem
from mpsearch.allocation.solvers.registry import register_solver


@register_solver
class GreedySolver(BaseSolver):
    """Fast heuristic (see the module docstring). No options."""

    name = "greedy"

    def _solve(self, problem: Problem) -> tuple[np.ndarray, bool]:
        dec = problem.decisions
        n_dec, _ = dec.allowed.shape
        allowed = dec.allowed
        rows = np.arange(n_dec)

        use, caps = resource_tables(problem)  # (R, D, F), (R,)
        cap = caps[:, None, None]
        cost = np.where(allowed, dec.cost, 0.0)

        cur = dec.best()
        d_cost = cost - cost[rows, cur][:, None]  # (D, F): cost change of each move
        d_use = use - use[:, rows, cur][:, :, None]  # (R, D, F): usage change of each move

        def usage() -> np.ndarray:  # recomputed, not accumulated: no drift
            return use[:, rows, cur].sum(axis=1)[:, None, None]

        def move(d: int, g: int) -> None:
            cur[d] = g
            d_cost[d] = cost[d] - cost[d, g]
            d_use[:, d] = use[:, d] - use[:, d, g][:, None]

        over = np.maximum(usage() - cap, 0.0)
        span = (np.where(allowed, use, -np.inf).max(axis=2) - np.where(allowed, use, np.inf).min(axis=2)).sum(axis=1)
        norm = np.where(over[:, 0, 0] > 0, over[:, 0, 0], np.where(span > 0, span, 1.0))[:, None, None]

        # Phase 2 of the docstring: downgrade until every constraint holds.
        for _ in range(10 * allowed.size + 10):
            now = usage()
            over = np.maximum(now - cap, 0.0)
            if not over.any():
                break
            removed = ((over - np.maximum(now + d_use - cap, 0.0)) / norm).sum(axis=0)  # (D, F)
            candidate = allowed & (removed > 1e-12)
            if not candidate.any():
                names = ", ".join(["budget"] * (problem.budget_bytes is not None)
                                  + [repr(c.name) for c in problem.extra])
                raise NoSolutionFoundError(
                    f"greedy found no plan meeting {names} together (it is a heuristic); "
                    "use --solver cbc to find one or prove there is none"
                )
            score = np.where(candidate, d_cost / np.where(candidate, removed, 1.0), np.inf)
            ties = score == score.min()
            d, g = np.unravel_index(int(np.argmax(np.where(ties, removed, -np.inf))), score.shape)
            move(int(d), int(g))
        else:  # pragma: no cover - each move strictly lowers the overrun
            raise SolverError("greedy did not converge; this is a bug in mpsearch, please report it")

        # Phase 3: take the best objective-lowering move that keeps every constraint, while there is one.
        for _ in range(10 * allowed.size + 10):
            fits = allowed & (usage() + d_use <= cap).all(axis=0)
            gain = np.where(fits & (d_cost < 0), d_cost, 0.0)
            if not (gain < 0).any():
                break
            d, g = np.unravel_index(int(np.argmin(gain)), gain.shape)
            move(int(d), int(g))
        return dec.expand(cur), False
