"""From a profile and a budget to a plan: builds the solver's Problem, runs a solver, writes the Plan.

The Problem is built by :mod:`mpsearch.allocation.formulation` (``build_problem``, ``layer_costs`` and ``parse_pins`` are
importable from here too); the decoupled objective comes from :mod:`mpsearch.allocation.endtoend`.
"""

from __future__ import annotations

from mpsearch.budget import format_bytes, parse_budget
from mpsearch.allocation.endtoend import activation_overrides, e2e_costs
from mpsearch.errors import InfeasibleError
from mpsearch.allocation.formulation import build_problem, layer_costs, parse_pins, resolve_metric
from mpsearch.models import DEFAULT_ROLE_PINS
from mpsearch.plan import Plan
from mpsearch.profiling.store import Profile
from mpsearch.allocation.solvers import get_solver, min_feasible_bytes
from mpsearch.models import resolve_role_pins

__all__ = ["build_problem", "layer_costs", "parse_pins", "solve"]


def solve(profile, budget="60%", *, metric: str = "auto", solver: str = "ilp", pins=None, tie: bool = False,
          step_weights=None, role_pins=None, weights=None, max_damage: float | None = None,
          fp_act_windows: int = 0) -> Plan:
    """Allocate a format per layer under ``budget`` (any DESIGN.md budget form) and return the Plan.

    Fragile layers are pinned by role (``role_pins``, default ``models.DEFAULT_ROLE_PINS``; ``{}`` for none);
    ``pins`` ({regex: format} or 'regex=format' strings) override them.

    ``weights`` ('content=1,quality=1' or a dict) solves the decoupled end-to-end objective
    (``endtoend.e2e_costs``: needs ``mpsearch profile --end-to-end``); ``max_damage`` rules out any
    (layer, format) whose damage exceeds that fraction of the largest (minimax); ``fp_act_windows`` keeps
    activations in fp in that many of the most damaging measured step windows.

    Raises InfeasibleError naming the smallest feasible budget when ``budget`` cannot be met.
    """

    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    info = profile.info
    metric = resolve_metric(profile, metric)
    b = parse_budget(budget, fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes,
                     quantizable_numel=info.quantizable_numel)
    cost, e2e = None, None
    if weights is not None or max_damage is not None or fp_act_windows:

        keep = resolve_role_pins(info, profile.formats, role_pins)  # minimax never rules out a role pin
        cost, e2e = e2e_costs(profile, weights, step_weights=step_weights, max_damage=max_damage, keep=keep)
        metric, step_weights = "e2e", e2e["step_weights"]
    problem = build_problem(profile, b.bytes, metric="rel_mse" if cost is not None else metric,
                            step_weights=step_weights, pins=pins, tie=tie, role_pins=role_pins, cost=cost)
    try:
        sol = get_solver(solver).solve(problem)
    except InfeasibleError as e:
        raise _without_role_pins_hint(e, profile, problem, role_pins, pins, tie) from None
    assignment = {name: problem.formats[int(c)] for name, c in zip(problem.layer_names, sol.choice)}
    overrides = []
    if fp_act_windows:
        overrides = activation_overrides(profile, assignment, fp_act_windows, weights=weights)
    plan = Plan.from_assignment(
        info, assignment, budget=b.to_dict(), weights=profile.weights, overrides=overrides,
        predictions={"objective": float(sol.objective), "metric": metric,
                     "formats": {f: int((sol.choice == i).sum()) for i, f in enumerate(problem.formats)}},
        provenance={"solver": sol.solver, "status": sol.status, "seconds": round(float(sol.seconds), 4),
                    "metric": metric, "tie": bool(tie), "pins": parse_pins(pins),
                    "role_pins": {getattr(r, "value", r): f for r, f in
                                  (DEFAULT_ROLE_PINS if role_pins is None else role_pins).items()},
                    "step_weights": None if step_weights is None else [float(x) for x in step_weights],
                    "profile_digest": profile.digest, "profile_config": profile.config,
                    **({"end_to_end": e2e} if e2e is not None else {})},
    )
    if plan.predicted_bytes != sol.total_bytes:
        raise AssertionError(f"plan bytes {plan.predicted_bytes} != solver bytes {sol.total_bytes}")
    return plan


def _without_role_pins_hint(err: InfeasibleError, profile, problem, role_pins, pins, tie) -> InfeasibleError:
    """Add to an infeasible-budget error how small the model gets without the default role pins."""
    if role_pins is not None or err.min_bytes is None:
        return err

    unpinned = build_problem(profile, None, pins=pins, tie=tie, role_pins={})
    lowest = min_feasible_bytes(unpinned)
    if lowest >= err.min_bytes:
        return err
    return InfeasibleError(f"{err} (the default role pins keep fragile layers at higher precision; without "
                           f"them, --no-default-pins, the smallest feasible size is {lowest:,} B "
                           f"({format_bytes(lowest)}))", min_bytes=err.min_bytes)
