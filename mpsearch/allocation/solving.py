"""``solve()``, what ``mpsearch.solve`` is: :func:`~mpsearch.allocation.formulation.formulate`, a solver, the Plan.

``build_problem``, ``layer_costs`` and ``parse_pins`` are importable from here too.
"""

from __future__ import annotations

from mpsearch.allocation.formulation import build_problem, formulate, layer_costs, parse_pins
from mpsearch.plan import Plan

__all__ = ["build_problem", "layer_costs", "parse_pins", "solve"]


def solve(profile, budget="60%", *, metric: str = "auto", solver="ilp", pins=None, tie: bool = False,
          step_weights=None, role_pins=None, objective_weights=None, max_damage: float | None = None,
          fp_act_windows: int = 0, compute=None, compute_cost: str = "bops", act_windows: int = 2, pipe=None,
          layer_calls=None, weights=None) -> Plan:
    """Allocate a format per layer under ``budget`` (any docs/design.md budget form) and return the Plan.

    ``solver``: a registered name (``"ilp"``, ``"highs"``, ``"greedy"``, ...) or a solver instance
    (``mpsearch.allocation.solvers.IlpSolver(time_limit=5)``). Fragile layers are pinned by role
    (``role_pins``, default ``models.DEFAULT_ROLE_PINS``; ``{}`` for none); ``pins`` ({regex: format} or
    'regex=format' strings) override them.

    ``objective_weights`` ('content=1,quality=1' or a dict) solves the decoupled end-to-end objective
    (``endtoend.e2e_costs``: needs ``mpsearch profile --end-to-end``); ``max_damage`` rules out any
    (layer, format) whose damage exceeds that fraction of the largest (minimax); ``fp_act_windows`` keeps
    activations in fp in that many of the most damaging measured step windows.

    ``compute`` ('50%', bit operations, or with ``compute_cost="latency"`` seconds such as '12ms') adds a
    compute budget per denoiser call, with activation precision per step window (``act_windows``) a choice;
    it needs ``pipe`` (or ``layer_calls``). ``weights`` is the deprecated old name of ``objective_weights``.
    Every keyword is :func:`~mpsearch.allocation.formulation.formulate`'s.

    Raises InfeasibleError naming the smallest feasible budget when ``budget`` cannot be met.
    """
    form = formulate(profile, budget, metric=metric, objective_weights=objective_weights, step_weights=step_weights,
                     pins=pins, role_pins=role_pins, tie=tie, max_damage=max_damage, fp_act_windows=fp_act_windows,
                     compute=compute, compute_cost=compute_cost, act_windows=act_windows, pipe=pipe,
                     layer_calls=layer_calls, weights=weights)
    return form.to_plan(form.solve(solver))
