"""From a profile and a budget to a plan: builds the solver's Problem, runs a solver, writes the Plan."""

from __future__ import annotations

import re

import numpy as np

from .budget import format_bytes, parse_budget
from .models import DEFAULT_ROLE_PINS
from .errors import InfeasibleError, UsageError
from .plan import Plan
from .profile_store import LOCAL_METRICS, Profile


def layer_costs(profile: Profile, metric: str = "rel_mse", step_weights=None) -> np.ndarray:
    """(layers, formats) sensitivity: the metric turned into an error (lower is better), averaged over steps
    with ``step_weights`` (default uniform), normalized so the largest entry is 1. NaN -> ineligible (inf)."""
    if metric not in LOCAL_METRICS:
        raise UsageError(f"unknown metric {metric!r}; expected one of {', '.join(LOCAL_METRICS)}")
    values = profile.metric(metric)
    if metric == "sqnr":
        err = 10.0 ** (-values / 10.0)
    elif metric == "cosine":
        err = 1.0 - values
    else:
        err = values
    S = err.shape[-1]
    if step_weights is None:
        w = np.full(S, 1.0 / S)
    else:
        w = np.asarray(step_weights, dtype=float)
        if w.shape != (S,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise UsageError(f"step_weights must be {S} non-negative numbers with a positive sum (one per profiled "
                             f"step); got {w.tolist()}; pass {S} weights")
        w = w / w.sum()
    cost = np.einsum("lfs,s->lf", np.nan_to_num(err, nan=0.0), w)
    cost = np.where(np.isnan(err).any(-1), np.inf, np.maximum(cost, 0.0))
    cost[:, 0] = 0.0  # fp
    finite = cost[np.isfinite(cost)]
    top = finite.max() if finite.size else 0.0
    return cost / top if top > 0 else cost


def parse_pins(pins) -> dict[str, str]:
    """Pins as {regex: format}; accepts a dict, a list of 'regex=format' strings, or one such string."""
    if pins is None:
        return {}
    if isinstance(pins, str):
        pins = [pins]
    if isinstance(pins, dict):
        items = list(pins.items())
    else:
        items = []
        for p in pins:
            if "=" not in p:
                raise UsageError(f"pin {p!r} must look like REGEX=FORMAT; write it as e.g. 'conv_out=fp'")
            pattern, fmt = p.rsplit("=", 1)
            items.append((pattern, fmt))
    out = {}
    for pattern, fmt in items:
        try:
            re.compile(pattern)
        except re.error as e:
            raise UsageError(f"pin pattern {pattern!r} is not a valid regex ({e}); fix the pattern "
                             "(quote it in the shell)") from None
        out[pattern] = fmt
    return out


def build_problem(profile: Profile, budget_bytes: int | None, *, metric="rel_mse", step_weights=None,
                  pins=None, tie: bool = False, role_pins=None, cost=None):
    """The solver Problem for a profile (costs, exact bytes, pins, tie groups).

    ``role_pins`` ({role: format}; None: ``models.DEFAULT_ROLE_PINS``, {}: none) pin layers by role first;
    ``pins`` (regexes) then override them. ``cost`` ((layers, formats), e.g. ``endtoend.e2e_costs``) replaces
    the local metric's costs.
    """
    from .models import resolve_role_pins
    from .solver import Problem

    info = profile.info
    formats = profile.formats
    cost = layer_costs(profile, metric, step_weights) if cost is None else np.asarray(cost, dtype=float)
    nbytes = np.zeros(cost.shape, dtype=np.int64)
    for li, layer in enumerate(info.layers):
        for fi, f in enumerate(formats):
            if f in layer.eligible:
                nbytes[li, fi] = layer.nbytes(f)
    names = list(info.names)
    index_of = {n: i for i, n in enumerate(names)}
    pinned: dict[int, int] = {index_of[n]: formats.index(f)
                              for n, f in resolve_role_pins(info, formats, role_pins).items()}
    for pattern, fmt in parse_pins(pins).items():
        if fmt not in formats:
            raise UsageError(f"pin {pattern}={fmt}: format {fmt!r} is not in the profile; use one of "
                             f"{', '.join(formats)}")
        hits = [i for i, n in enumerate(names) if re.search(pattern, n)]
        if not hits:
            raise UsageError(f"pin pattern {pattern!r} matches no layer; see `mpsearch inspect` for layer names")
        for i in hits:
            if not np.isfinite(cost[i, formats.index(fmt)]):
                raise UsageError(f"pin {pattern}={fmt}: layer {names[i]} cannot take {fmt} "
                                 f"({info.layers[i].ineligible.get(fmt, 'not eligible')})")
            pinned[i] = formats.index(fmt)
    groups = ()
    if tie:
        index = {n: i for i, n in enumerate(names)}
        groups = tuple(tuple(index[n] for n in g) for g in info.tie_groups)
    return Problem(layer_names=tuple(names), formats=tuple(formats), cost=cost, nbytes=nbytes,
                   fixed_bytes=info.fixed_bytes, budget_bytes=budget_bytes, groups=groups, pins=pinned)


def solve(profile, budget="60%", *, metric: str = "rel_mse", solver: str = "ilp", pins=None, tie: bool = False,
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
    from .solver import get_solver

    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    info = profile.info
    b = parse_budget(budget, fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes,
                     quantizable_numel=info.quantizable_numel)
    cost, e2e = None, None
    if weights is not None or max_damage is not None or fp_act_windows:
        from .endtoend import e2e_costs
        from .models import resolve_role_pins

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
        from .endtoend import activation_overrides

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
    from .solver import min_feasible_bytes

    unpinned = build_problem(profile, None, pins=pins, tie=tie, role_pins={})
    lowest = min_feasible_bytes(unpinned)
    if lowest >= err.min_bytes:
        return err
    return InfeasibleError(f"{err} (the default role pins keep fragile layers at higher precision; without "
                           f"them, --no-default-pins, the smallest feasible size is {lowest:,} B "
                           f"({format_bytes(lowest)}))", min_bytes=err.min_bytes)
