"""``solve()``, what ``mpsearch.solve`` is: :func:`~mpsearch.allocation.formulation.formulate`, a solver, the Plan.

"""

from __future__ import annotations

from typing import Any

from mpsearch.allocation.compute import LayerCalls
from mpsearch.allocation.config import SolveConfig, make_config
from mpsearch.allocation.formulation import formulate
from mpsearch.plan import Plan

__all__ = ["SolveConfig", "solve"]

#: the budget of ``solve(profile)`` when neither ``budget`` nor a config's budget is given
DEFAULT_BUDGET = "60%"


def solve(profile: Any, budget: Any = None, *, config: SolveConfig | None = None, pipe: Any = None,
          layer_calls: LayerCalls | None = None, **keywords: Any) -> Plan:
    """Allocate a format per layer under ``budget`` (any budget form of docs/design.md; default 60%) and return
    the Plan.

    ``config`` is a :class:`~mpsearch.allocation.config.SolveConfig`; ``keywords`` are its field names and
    build one (or replace its fields): ``mpsearch.solve(profile, budget="600KB", tie=True)`` is
    ``mpsearch.solve(profile, config=SolveConfig(budget="600KB", tie=True))``. Among them: ``solver`` (a
    registered name, ``"cbc"`` (default), ``"highs"``, ``"greedy"``, ..., or an instance such as
    ``CbcSolver(time_limit=5)``), ``metric``, ``pins``, ``role_pins`` (default ``models.DEFAULT_ROLE_PINS``;
    ``{}`` for none), ``tie``, ``step_weights``, the decoupled end-to-end objective (``objective_weights``,
    ``max_damage``, ``fp_act_windows``), a compute budget (``compute``, ``compute_cost``, ``act_windows``; it
    needs ``pipe`` or ``layer_calls``) and ``allow_partial`` (solve a profile that lacks some units).

    Raises InfeasibleError naming the smallest feasible budget when ``budget`` cannot be met.
    """
    if budget is not None:
        keywords["budget"] = budget
    cfg = make_config(config, "solve", **keywords)
    if cfg.budget is None:
        cfg = cfg.replace(budget=DEFAULT_BUDGET)
    form = formulate(profile, config=cfg, pipe=pipe, layer_calls=layer_calls)
    return form.to_plan(form.solve())
