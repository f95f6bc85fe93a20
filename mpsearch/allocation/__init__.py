"""Allocation: what decides, from a profile and a budget, which format each layer gets and which steps reuse
cached features.

* :mod:`~mpsearch.allocation.formulation`: the one path profile + budget + objective -> problem -> Plan
  (``formulate()`` -> ``Formulation``; ``.solve(solver)``, ``.to_plan(solution)``), over the array-level
  :mod:`~mpsearch.allocation.objective` (costs, pins, ``build_problem``).
* :mod:`~mpsearch.allocation.solving`: ``solve()``, what ``mpsearch.solve`` is.
* :mod:`~mpsearch.allocation.solvers`: the solver engines, one file each, behind one ``BaseSolver`` contract.
* :mod:`~mpsearch.allocation.pareto`, :mod:`~mpsearch.allocation.compute`, :mod:`~mpsearch.allocation.refine`:
  budget sweeps, compute budgets, Optuna refinement with real generations.
* :mod:`~mpsearch.allocation.cache_scheduler`, :mod:`~mpsearch.allocation.joint`: the DP cache scheduler, and
  quantization and caching solved together.
* :mod:`~mpsearch.allocation.decoupled`: the end-to-end tier's shortlist and its decoupled objective.
* :mod:`~mpsearch.allocation.baselines`: the anchors' allocation methods, for the evidence suite.
* :mod:`~mpsearch.allocation.config`: :class:`SolveConfig`, the budget, objective and constraints that
  ``solve``, ``formulate``, ``pareto``, ``refine``, ``solve_joint`` and the CLI share.
"""

from mpsearch.allocation.config import COMPUTE_COSTS, SolveConfig, make_config
from mpsearch.allocation.solvers.registry import DEFAULT_SOLVER

__all__ = ["COMPUTE_COSTS", "DEFAULT_SOLVER", "SolveConfig", "make_config"]
