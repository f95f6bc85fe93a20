"""What a solver returns: :class:`Solution`, one format per layer with its objective, bytes and status.

A solution is plain data over the arrays of the :class:`~mpsearch.allocation.solvers.problem.Problem` it was solved for;
:meth:`Solution.assignment` turns it back into layer names and format names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpsearch.allocation.solvers.problem import Problem, frozen
from mpsearch.errors import UsageError

__all__ = ["Solution"]


@dataclass(frozen=True, eq=False)
class Solution:
    """What a solver returns: one format per layer, and what it amounts to.

    ``choice[l]`` is the index into ``problem.formats`` of layer ``l``'s format; ``objective`` is
    ``sum_l cost[l, choice[l]]``; ``total_bytes`` is ``fixed_bytes + sum_l nbytes[l, choice[l]]``.
    ``status`` is ``"optimal"`` when the solver proved no feasible assignment has a lower objective (within
    the solver's numeric tolerance), ``"feasible"`` when it only guarantees the constraints hold.
    ``seconds`` is the wall time of :meth:`BaseSolver.solve`.
    """

    choice: np.ndarray
    objective: float
    total_bytes: int
    status: str
    solver: str
    seconds: float

    STATUSES = ("optimal", "feasible")

    def __post_init__(self) -> None:
        if self.status not in self.STATUSES:
            raise UsageError(f"Solution.status must be one of {self.STATUSES}, got {self.status!r}")
        choice = np.array(self.choice, dtype=np.int64, copy=True)
        if choice.ndim != 1:
            raise UsageError(f"Solution.choice must be 1-D (one format index per layer), got shape {choice.shape}")
        object.__setattr__(self, "choice", frozen(choice))

    def assignment(self, problem: Problem) -> dict[str, str]:
        """Layer name -> format name, in layer order."""
        if len(problem.layer_names) != len(self.choice):
            raise UsageError(
                f"this solution has {len(self.choice)} layers but the problem has {len(problem.layer_names)}; "
                "pass the problem it was solved for"
            )
        return problem.assignment(self.choice)
