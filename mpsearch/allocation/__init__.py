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

import importlib

# public name -> module below mpsearch.allocation, imported on first use: the command line's parser reads
# ``allocation.defaults`` to build --help, which must not import the solvers (numpy, PuLP) through this package
_LAZY = {"COMPUTE_COSTS": "config", "SolveConfig": "config", "make_config": "config", "DEFAULT_SOLVER": "defaults"}

__all__ = ["COMPUTE_COSTS", "DEFAULT_SOLVER", "SolveConfig", "make_config"]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mpsearch.allocation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mpsearch.allocation' has no attribute {name!r}")
