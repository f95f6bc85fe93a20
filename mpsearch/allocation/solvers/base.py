"""The contract every solver keeps: :class:`BaseSolver` and the errors a solver raises.

:meth:`BaseSolver.solve` is a template method over :meth:`BaseSolver._solve`: it rules out the infeasible
cases that need no search, returns the all-cheapest answer when it already fits, and checks every answer a
subclass finds before it leaves. The problem and its answer live in :mod:`mpsearch.allocation.solvers.problem` and
:mod:`mpsearch.allocation.solvers.solution`, the checks in :mod:`mpsearch.allocation.solvers.feasibility`, the lookup
by name in :mod:`mpsearch.allocation.solvers.registry`; the names of the first three are importable from here too.
"""

from __future__ import annotations

import abc
import math
import time

import numpy as np

from mpsearch.allocation.solvers.feasibility import (  # noqa: F401  (re-exported for callers of mpsearch.allocation.solvers.base)
    check_assignment,
    extra_tolerance,
    min_feasible_bytes,
    resource_tables,
)
from mpsearch.allocation.solvers.problem import Constraint, Decisions, Problem  # noqa: F401  (re-exported)
from mpsearch.allocation.solvers.solution import Solution
from mpsearch.budget import format_bytes  # one formatter for every size message
from mpsearch.errors import InfeasibleError, MpsearchError, UsageError

__all__ = [
    "BaseSolver",
    "Constraint",
    "Decisions",
    "NoSolutionFoundError",
    "Problem",
    "Solution",
    "SolverError",
    "check_assignment",
    "format_bytes",
    "min_feasible_bytes",
    "resource_tables",
]


class SolverError(MpsearchError):
    """A solver failed: it stopped without an answer, or (a bug) returned an answer that breaks a constraint."""


class NoSolutionFoundError(SolverError):
    """A heuristic found no feasible assignment although one may exist; an exact solver can tell for sure."""


class BaseSolver(abc.ABC):
    """Base class of every solver. The contract below is what callers and the conformance suite rely on.

    Using a solver
    --------------
    ``get_solver(name, **options).solve(problem)`` returns a :class:`Solution` that is guaranteed to

    1. be feasible: each layer takes a format it may take (finite cost), pinned layers take their pin, all
       members of a tie group take one format, ``total_bytes <= budget_bytes`` (exactly, in integers) when a
       budget is set, and every extra constraint holds (up to float round-off, 1e-9 relative);
    2. say in ``status`` whether optimality is proven: ``"optimal"`` means no feasible assignment has a lower
       objective (within the backend's numeric tolerance); ``"feasible"`` means only (1) holds, as for
       heuristics, or for an exact solver that stopped at its time limit with an incumbent;
    3. be deterministic: the same problem and options give the same ``choice``. Among assignments with
       equal objective, which one is returned is the solver's own business, but never random.

    ``solve`` never returns a plan that breaks a constraint. It raises instead:

    * :class:`~mpsearch.errors.InfeasibleError` when no assignment exists. When the budget is below
      :func:`min_feasible_bytes`, the message states that smallest feasible size (in bytes and readable
      units) and ``min_bytes`` carries it. When an extra constraint cannot hold, the message names it; when
      the budget and extra constraints only fail together, an exact solver states the smallest size that
      also meets them (``min_bytes``), or that the extra constraints contradict each other;
    * :class:`NoSolutionFoundError` when a heuristic found no feasible assignment though one may exist
      (only possible with extra constraints);
    * :class:`SolverError` when a backend stops without an answer (e.g. a time limit before any feasible
      assignment) or, a bug, returns an assignment that breaks a constraint.

    Writing a solver
    ----------------
    Subclass, set the class attribute ``name`` (and optionally ``aliases``), take options as keyword-only
    ``__init__`` arguments, implement :meth:`_solve`, and decorate the class with :func:`register_solver`.
    :meth:`solve` is a template method: it checks the arguments, raises the infeasibility errors above that
    need no search, returns at once when each decision's cheapest format already satisfies every constraint
    (that answer is optimal for any solver), and otherwise calls :meth:`_solve`, times it and verifies the
    answer with :func:`check_assignment`. Subclasses do not override :meth:`solve`.
    """

    #: Registry name, e.g. ``"cbc"``; what ``get_solver`` and the CLI's ``--solver`` take.
    name: str = ""
    #: Other names ``get_solver`` accepts for this solver.
    aliases: tuple[str, ...] = ()

    def solve(self, problem: Problem) -> Solution:
        """Solve ``problem``; see the class docstring for what the answer guarantees and what is raised."""
        if not isinstance(problem, Problem):
            raise UsageError(f"{type(self).__name__}.solve expects a Problem, got {type(problem).__name__}")
        start = time.perf_counter()
        self._raise_if_plainly_infeasible(problem)
        dec = problem.decisions
        best = dec.expand(dec.best())
        if not check_assignment(problem, best):
            choice, optimal = best, True
        else:
            choice, optimal = self._solve(problem)
        choice = np.asarray(choice)
        broken = check_assignment(problem, choice)
        if broken:
            raise SolverError(
                f"solver {self.name!r} returned a plan that breaks the constraints ({'; '.join(broken[:5])}); "
                "this is a bug in mpsearch, please report it with the problem that caused it"
            )
        return Solution(
            choice=choice.astype(np.int64),
            objective=problem.objective(choice),
            total_bytes=problem.total_bytes(choice),
            status="optimal" if optimal else "feasible",
            solver=self.name,
            seconds=time.perf_counter() - start,
        )

    @abc.abstractmethod
    def _solve(self, problem: Problem) -> tuple[np.ndarray, bool]:
        """Search for the best assignment of ``problem``; return ``(choice, proven_optimal)``.

        Called by :meth:`solve` only when the budget alone and each extra constraint alone are satisfiable
        and the all-cheapest assignment breaks some constraint. ``choice`` is one format index per layer
        (``problem.decisions.expand`` maps a per-decision choice to it). ``proven_optimal`` is True only when
        the solver proved optimality. Raise :class:`~mpsearch.errors.InfeasibleError` when the constraints
        are proven jointly infeasible (see :meth:`_joint_infeasible_error`), :class:`NoSolutionFoundError`
        when a heuristic gives up, :class:`SolverError` when the backend fails. The returned choice is
        checked against every constraint afterwards.
        """

    # ------------------------------------------------------------------------------ shared helpers
    @staticmethod
    def _raise_if_plainly_infeasible(problem: Problem) -> None:
        reasons: list[str] = []
        min_bytes: int | None = None
        if problem.budget_bytes is not None:
            smallest = min_feasible_bytes(problem)
            if problem.budget_bytes < smallest:
                min_bytes = smallest
                reasons.append(
                    f"budget {problem.budget_bytes:,} B ({format_bytes(problem.budget_bytes)}) is infeasible: the "
                    f"smallest feasible size is {smallest:,} B ({format_bytes(smallest)}) given the eligible "
                    "formats, pins and tie groups; raise --budget to at least that"
                )
        dec = problem.decisions
        for k, con in enumerate(problem.extra):
            lowest = math.fsum(np.where(dec.allowed, dec.extra[k], np.inf).min(axis=1).tolist())
            scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
            if lowest > con.rhs + extra_tolerance(con.rhs, scale):
                reasons.append(
                    f"extra constraint {con.name!r} cannot hold: its smallest reachable value is {lowest:.6g}, over "
                    f"its limit {con.rhs:.6g}, whatever the budget; relax {con.name!r} to at least {lowest:.6g}"
                )
        if reasons:
            raise InfeasibleError("; also ".join(reasons), min_bytes=min_bytes)

    @staticmethod
    def _joint_infeasible_error(problem: Problem, min_bytes_under_extra: int | None) -> InfeasibleError:
        """The error for a problem whose budget and extra constraints hold one by one but not together.

        ``min_bytes_under_extra`` is the smallest total size of an assignment meeting every extra constraint
        (ignoring the budget), or None when the extra constraints contradict each other.
        """
        names = ", ".join(repr(c.name) for c in problem.extra)
        plural = "s" if len(problem.extra) > 1 else ""
        if min_bytes_under_extra is None:
            return InfeasibleError(
                f"the extra constraints {names} cannot all hold at once (each can on its own), whatever the "
                "budget; relax one of them"
            )
        budget = problem.budget_bytes
        return InfeasibleError(
            f"budget {budget:,} B ({format_bytes(budget or 0)}) is infeasible together with the extra "
            f"constraint{plural} {names}: the smallest size that also meets {'them' if plural else 'it'} is "
            f"{min_bytes_under_extra:,} B ({format_bytes(min_bytes_under_extra)}); raise --budget to at least "
            f"that, or relax {names}",
            min_bytes=min_bytes_under_extra,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
