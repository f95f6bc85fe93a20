"""Solvers: turn a :class:`Problem` (cost and bytes per layer and format, a budget) into a :class:`Solution`.

Array-level only; building a Problem from a profile is the caller's job. Solvers by name
(``get_solver(name, **options)``), or as instances of the classes exported here (every ``solver=`` takes either:
``solver="cbc"`` or ``solver=CbcSolver(time_limit=5)``):

* ``"cbc"`` (the default, ``DEFAULT_SOLVER``): exact, CBC through PuLP.
* ``"highs"``: exact, HiGHS through scipy.optimize.milp (same formulation; a cross-check).
* ``"greedy"``: fast heuristic, status "feasible".
* ``"bruteforce"``: exact enumeration for small problems (the test oracle).
* ``"optuna"``: Optuna search seeded by the ILP's answers, for objectives that are not additive (e.g. real
  generations scored end to end); status "feasible".
* ``"random"``: a random feasible allocation that fills the budget (the baseline of the benchmarks).

Every solver keeps the contract documented on :class:`BaseSolver`.

Layout: ``problem`` (Problem, Constraint, Decisions), ``feasibility`` (min_feasible_bytes, check_assignment,
resource_tables), ``solution`` (Solution), ``base`` (BaseSolver and the solver errors), ``registry``
(register_solver, get_solver, available_solvers), then one module per solver (``_ilp`` holds the formulation
the two ILP backends share).
"""

from mpsearch.allocation.solvers.base import BaseSolver, NoSolutionFoundError, SolverError

# Importing the solver modules registers them.
from mpsearch.allocation.solvers.bruteforce import BruteForceSolver
from mpsearch.allocation.solvers.feasibility import check_assignment, min_feasible_bytes
from mpsearch.allocation.solvers.greedy import GreedySolver
from mpsearch.allocation.solvers.ilp_highs import HighsSolver
from mpsearch.allocation.solvers.ilp_pulp import PulpCbcSolver
from mpsearch.allocation.solvers.optuna_search import OptunaSolver
from mpsearch.allocation.solvers.problem import Constraint, Decisions, Problem
from mpsearch.allocation.solvers.randomized import RandomSolver
from mpsearch.allocation.solvers.registry import DEFAULT_SOLVER, available_solvers, get_solver, register_solver
from mpsearch.allocation.solvers.solution import Solution
from mpsearch.budget import format_bytes

#: the ``"cbc"`` solver (CBC through PuLP): ``solve(..., solver=CbcSolver(time_limit=5))``
CbcSolver = PulpCbcSolver

__all__ = [
    "DEFAULT_SOLVER",
    "BaseSolver",
    "BruteForceSolver",
    "CbcSolver",
    "Constraint",
    "Decisions",
    "GreedySolver",
    "HighsSolver",
    "NoSolutionFoundError",
    "OptunaSolver",
    "Problem",
    "PulpCbcSolver",
    "RandomSolver",
    "Solution",
    "SolverError",
    "available_solvers",
    "check_assignment",
    "format_bytes",
    "get_solver",
    "min_feasible_bytes",
    "register_solver",
]
