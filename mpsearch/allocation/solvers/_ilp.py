"""The integer-program formulation shared by the ILP backends (CBC through PuLP, HiGHS through SciPy).

One binary ``x[d, f]`` per decision (tie group or single layer) and allowed format; decisions with a single
allowed format (pinned, or only one eligible format) are constants, not variables::

    minimize    sum c[d, f] x[d, f]
    subject to  sum_f x[d, f] == 1                       for every free decision d
                sum a_r[d, f] x[d, f] <= b_r              for the byte budget and each extra constraint r

Every row is shifted by its per-decision minimum (``c[d, f] = cost[d, f] - min_f cost[d, f]``, likewise for
bytes and extra coefficients), so coefficients are >= 0 and small, and the objective is scaled so that its median
positive coefficient is 1; neither changes which assignments are optimal. A backend only turns a :class:`LinearModel`
into 0/1 values.

Backends round binaries that sit within their integrality tolerance of 0 or 1; with byte coefficients in the
millions that rounding can move a total by a few bytes. The driver therefore checks the rounded answer
exactly and, if a row is over, solves again with that row tightened by the excess (a few times at most).
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass

import numpy as np

from mpsearch.allocation.solvers.base import BaseSolver, SolverError
from mpsearch.allocation.solvers.feasibility import extra_tolerance, min_feasible_bytes
from mpsearch.allocation.solvers.problem import Problem
from mpsearch.errors import UsageError

_MAX_TIGHTENINGS = 4


@dataclass(frozen=True)
class LinearModel:
    """A 0/1 program in the shape above, ready for a backend.

    Variables ``starts[j]:starts[j+1]`` are the one-hot block of the j-th free decision.
    """

    c: np.ndarray  # (n,) objective
    starts: np.ndarray  # (n_free + 1,) block boundaries of the one-hot rows
    a_ub: np.ndarray  # (m, n) inequality rows
    b_ub: np.ndarray  # (m,)
    row_names: tuple[str, ...]
    var_decision: np.ndarray  # (n,)
    var_format: np.ndarray  # (n,)
    fixed_choice: np.ndarray  # (D,) format of each constant decision, -1 for free ones

    @property
    def n_vars(self) -> int:
        return len(self.c)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """0/1 values (possibly off by a tolerance) -> per-decision format indices."""
        choice = self.fixed_choice.copy()
        x = np.asarray(x, dtype=np.float64)
        for j in range(len(self.starts) - 1):
            lo, hi = int(self.starts[j]), int(self.starts[j + 1])
            pick = lo + int(np.argmax(x[lo:hi]))
            choice[self.var_decision[pick]] = self.var_format[pick]
        return choice


@dataclass(frozen=True)
class RunResult:
    """What a backend reports: ``kind`` is "optimal", "feasible" (stopped with an incumbent) or "infeasible"."""

    kind: str
    x: np.ndarray | None
    raw_status: str


def build_model(problem: Problem, *, objective: str = "cost", margins: np.ndarray | None = None) -> LinearModel:
    """The 0/1 program of ``problem``.

    ``objective="cost"`` minimizes the problem's objective under the budget and the extra constraints;
    ``objective="bytes"`` minimizes total bytes under the extra constraints only (to state the smallest
    budget that the extra constraints allow). ``margins`` tighten the rows (in their own units).
    """
    dec = problem.decisions
    allowed = dec.allowed
    free = allowed.sum(axis=1) > 1
    fixed_choice = np.where(free, -1, np.argmax(allowed, axis=1)).astype(np.int64)
    var_decision, var_format = np.nonzero(allowed & free[:, None])  # row-major: blocks are contiguous
    counts = allowed[free].sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def shifted(table: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-variable coefficients minus each decision's minimum, and the sum of those minima."""
        low = np.where(allowed, table, np.inf).min(axis=1)
        return table[var_decision, var_format] - low[var_decision], math.fsum(low.tolist())

    rows: list[np.ndarray] = []
    rhs: list[float] = []
    names: list[str] = []
    if objective == "cost":
        c, _ = shifted(dec.cost)
        if problem.budget_bytes is not None:
            coef, _ = shifted(dec.nbytes.astype(np.float64))
            rows.append(coef)
            rhs.append(float(problem.budget_bytes - min_feasible_bytes(problem)))
            names.append("budget")
    elif objective == "bytes":
        c, _ = shifted(dec.nbytes.astype(np.float64))
    else:
        raise ValueError(f"objective must be 'cost' or 'bytes', got {objective!r}")
    for k, con in enumerate(problem.extra):
        coef, low = shifted(dec.extra[k])
        rows.append(coef)
        rhs.append(max(con.rhs - low, 0.0))  # >= -tolerance is guaranteed by BaseSolver.solve
        names.append(f"extra {con.name!r}")

    positive = c[c > 0]
    if positive.size:  # typical coefficient 1: solver tolerances are absolute, costs can be tiny or huge
        c = c / float(np.median(positive))
    a_ub = np.array(rows, dtype=np.float64).reshape(len(rows), len(c))
    b_ub = np.array(rhs, dtype=np.float64)
    if objective == "bytes":
        keep = [i for i, n in enumerate(names) if n != "budget"]
        a_ub, b_ub, names = a_ub[keep], b_ub[keep], [names[i] for i in keep]
    if margins is not None:
        b_ub = b_ub - margins[: len(b_ub)]
    return LinearModel(
        c=c,
        starts=starts,
        a_ub=a_ub,
        b_ub=b_ub,
        row_names=tuple(names),
        var_decision=var_decision.astype(np.int64),
        var_format=var_format.astype(np.int64),
        fixed_choice=fixed_choice,
    )


def row_excess(problem: Problem, choice: np.ndarray, *, with_budget: bool = True) -> np.ndarray:
    """How far a per-layer choice is over each row of :func:`build_model` (<= 0: kept), in the row's units."""
    out: list[float] = []
    if with_budget and problem.budget_bytes is not None:
        out.append(float(problem.total_bytes(choice) - problem.budget_bytes))
    for con in problem.extra:
        scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
        tol = extra_tolerance(con.rhs, scale)
        over = con.value(choice) - con.rhs
        out.append(over + tol if over > tol else over - tol)
    return np.array(out, dtype=np.float64)


class IlpBackend(BaseSolver):
    """An exact solver: builds :class:`LinearModel` and hands it to a backend (:meth:`_run`).

    Options: ``time_limit`` (seconds, None = no limit). When the limit stops the backend with a feasible
    incumbent, the answer comes back with status "feasible"; with none, :class:`SolverError` is raised.
    """

    #: What the backend is called in messages.
    backend = ""

    def __init__(self, *, time_limit: float | None = None):
        if time_limit is not None:
            if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
                raise UsageError(f"{self.name}: time_limit must be a number of seconds > 0 or None, got {time_limit!r}")
        self.time_limit = None if time_limit is None else float(time_limit)

    @abc.abstractmethod
    def _run(self, model: LinearModel, time_limit: float | None) -> RunResult:
        """Solve ``model`` (minimize, binaries, one-hot equalities, <= rows); never raise for infeasibility."""

    def _solve(self, problem: Problem) -> tuple[np.ndarray, bool]:
        deadline = None if self.time_limit is None else time.monotonic() + self.time_limit
        dec = problem.decisions
        margins = np.zeros(len(problem.extra) + (problem.budget_bytes is not None))
        for attempt in range(_MAX_TIGHTENINGS + 1):
            model = build_model(problem, margins=margins)
            result = self._call(model, deadline)
            if result.kind == "infeasible":
                if attempt:
                    raise SolverError(
                        f"{self.backend} found the plan only within its numeric tolerance, and none once the "
                        f"rows {', '.join(model.row_names)} were tightened by {margins.tolist()}; loosen the "
                        "budget or the extra constraints slightly"
                    )
                raise self._diagnose_infeasible(problem, deadline)
            choice = dec.expand(model.decode(result.x))  # type: ignore[arg-type]
            excess = row_excess(problem, choice)
            if (excess <= 0).all():
                return choice, result.kind == "optimal"
            margins = margins + np.maximum(excess, 0.0)
        raise SolverError(
            f"{self.backend}'s answers kept breaking {', '.join(model.row_names)} by round-off after "
            f"{_MAX_TIGHTENINGS} tightenings; this is a bug in mpsearch, please report it"
        )

    def _call(self, model: LinearModel, deadline: float | None) -> RunResult:
        limit = None
        if deadline is not None:
            limit = deadline - time.monotonic()
            if limit <= 0:
                raise SolverError(f"{self.name}: time_limit of {self.time_limit} s ran out before an answer")
        if model.n_vars == 0:
            return RunResult("optimal", np.zeros(0), "no variables")
        return self._run(model, limit)

    def _diagnose_infeasible(self, problem: Problem, deadline: float | None) -> Exception:
        if not problem.extra:
            return SolverError(
                f"{self.backend} reported the problem infeasible although the budget is at least the smallest "
                "feasible size; this is a bug in mpsearch, please report it"
            )
        model = build_model(problem, objective="bytes")
        result = self._call(model, deadline)
        if result.kind == "infeasible":
            return self._joint_infeasible_error(problem, None)
        choice = problem.decisions.expand(model.decode(result.x))  # type: ignore[arg-type]
        return self._joint_infeasible_error(problem, problem.total_bytes(choice))
