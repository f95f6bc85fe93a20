"""Schedule the cache for a pipeline, and plan quantization and caching together.

:func:`schedule_cache` measures the reuse costs of a unit (on the quantized model when a plan is given) and
returns a plan ``cache`` section. :func:`solve_joint` alternates: solve the formats, schedule the cache on the
model those formats make, then solve again with each layer's error weighted by how its output is used under
the schedule (a layer of the cached unit runs only at computed steps, and its error there is carried into
every step that reuses those features), until the formats stop changing or ``rounds`` is reached.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mpsearch.allocation.cache_scheduler import Schedule, full_computations_for_speedup, ideal_speedup, make_schedule
from mpsearch.allocation.config import SolveConfig, make_config
from mpsearch.allocation.defaults import DEFAULT_ROUNDS
from mpsearch.allocation.formulation import formulate
from mpsearch.cache_section import validate_cache_section
from mpsearch.cache_units import CacheUnit, compute_shares, get_unit
from mpsearch.errors import UsageError
from mpsearch.models import ModelInfo, get_denoiser
from mpsearch.plan import Plan
from mpsearch.profiling.cache_costs import measure_costs

#: SolveConfig fields the joint solve sets itself or does not combine with
_NOT_JOINT = ("step_weights", "objective_weights", "max_damage", "fp_act_windows", "compute")


def resolve_full_computations(steps: int, full_computations: int | None = None, speedup: float | None = None,
                              share: float | None = None) -> int:
    """K from either a number of full computations or a target (ideal) speedup."""
    if (full_computations is None) == (speedup is None):
        raise UsageError("give exactly one cache budget: a number of full computations (--full-computations K) "
                         "or a target speedup (--speedup X)")
    if full_computations is not None:
        if isinstance(full_computations, bool) or not isinstance(full_computations, (int, np.integer)) \
                or not 1 <= full_computations <= steps:
            raise UsageError(f"full computations (cache steps) must be an integer in 1..{steps} (the number of steps), "
                             f"got {full_computations!r}")
        return int(full_computations)
    if share is None:
        raise UsageError("the unit's share of compute is unknown for this model, so a --speedup cannot be turned "
                         "into a number of full computations; pass --full-computations K instead")
    assert speedup is not None  # exactly one of the two was given (checked above)
    return full_computations_for_speedup(speedup, steps, share)


def cache_section(unit: CacheUnit, schedule: Schedule, *, warmup: int, max_reuse: int | None, costs: str,
                  share: float | None) -> dict:
    """The plan ``cache`` section for ``schedule`` of ``unit``."""
    return {"method": schedule.method, "unit": unit.to_dict(), "compute": [bool(c) for c in schedule.compute],
            "warmup": int(warmup), "max_reuse": None if max_reuse is None else int(max_reuse), "costs": costs,
            "predicted_error": float(schedule.error), "share": None if share is None else round(float(share), 6)}


def schedule_cache(pipe: Any, *, steps: int = 20, full_computations: int | None = None, speedup: float | None = None,
                   method: str = "dp", unit: str | None = None, plan: Plan | None = None, warmup: int = 2,
                   max_reuse: int | None = None, cost: np.ndarray | None = None, guidance_scale: float | None = None,
                   **measure_options: Any) -> tuple[dict, Schedule, np.ndarray]:
    """Choose the steps that compute ``unit`` (default: the largest) for ``pipe``.

    ``cost`` (an (S, S) matrix) skips the measuring run. Returns ``(section, schedule, cost)``: the plan
    ``cache`` section, the :class:`Schedule` and the cost matrix it was chosen on.
    """

    denoiser = get_denoiser(pipe)
    u = get_unit(denoiser, unit)
    share = compute_shares(denoiser, [u])[u.name]
    k = resolve_full_computations(steps, full_computations, speedup, share)
    if cost is None:
        measure_options.setdefault("warmup", warmup)
        cost = measure_costs(pipe, u, steps, plan=plan, guidance_scale=guidance_scale, **measure_options)
        source = "measured-quantized" if plan is not None and plan.format_counts().keys() - {"fp"} else "measured"
    else:
        source = "measured"
    sched = make_schedule(method, cost, k, warmup=warmup, max_reuse=max_reuse)
    section = cache_section(u, sched, warmup=warmup, max_reuse=max_reuse, costs=source, share=share)
    return section, sched, np.asarray(cost)


def usage_weights(info: ModelInfo, unit: CacheUnit, schedule: Schedule) -> np.ndarray:
    """(layers, steps) weight of each layer's error at each step under ``schedule``: 1 everywhere outside the
    unit; inside it, the number of steps that use the features computed at that step (0 where it is reused)."""
    S = schedule.steps
    uses = np.bincount(schedule.source(), minlength=S).astype(float)
    prefixes = tuple(m + "." for m in unit.modules)
    w = np.ones((len(info.layers), S))
    for li, layer in enumerate(info.layers):
        if layer.name.startswith(prefixes):
            w[li] = uses
    return w


def solve_joint(profile: Any, pipe: Any, budget: Any = None, *, full_computations: int | None = None,
                speedup: float | None = None, method: str = "dp", unit: str | None = None, warmup: int = 2,
                max_reuse: int | None = None, rounds: int = DEFAULT_ROUNDS, guidance_scale: float | None = None,
                measure_options: dict | None = None, config: SolveConfig | None = None, **objective: Any) -> Plan:
    """One plan with layer formats and a cache section, solved and scheduled together (see module docstring).

    ``config`` (a :class:`~mpsearch.allocation.config.SolveConfig`) and the ``objective`` keywords (its fields)
    set the budget (``budget``: default the config's, else 60%), the solver and the local objective
    (``metric``, ``pins``, ``role_pins``, ``tie``, ``allow_partial``; not ``step_weights``: the schedule sets
    them, nor the end-to-end or compute ones); ``measure_options`` go to
    :func:`~mpsearch.profiling.cache_costs.measure_costs`. ``rounds`` (default 2, as ``mpsearch solve
    --rounds``) bounds the solve/schedule rounds.
    """
    measure_options = dict(measure_options or {})
    if budget is not None:
        objective["budget"] = budget
    cfg = make_config(config, "solve_joint", **objective)
    if cfg.budget is None:
        cfg = cfg.replace(budget="60%")
    not_here = [f for f in _NOT_JOINT if getattr(cfg, f) is not None and not (f == "fp_act_windows" and
                                                                           cfg.fp_act_windows == 0)]
    if not_here:
        raise UsageError(f"solve_joint takes the local objective only (metric, pins, tie, role_pins), not "
                         f"{', '.join(not_here)}: the cache schedule sets the step weights")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UsageError(f"rounds must be an integer >= 1, got {rounds!r}")
    form = formulate(profile, config=cfg)
    profile, info, steps = form.profile, form.profile.info, form.profile.steps
    # reuse costs are measured at the profile's image size (a pipeline's default may not suit the model)
    measure_options.setdefault("size", profile.config.get("size"))
    if full_computations is not None or speedup is None:  # a bad cache budget fails before any solving
        resolve_full_computations(steps, full_computations, None)
    elif isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not math.isfinite(speedup) \
            or speedup < 1:
        raise UsageError(f"speedup must be a number >= 1, got {speedup!r}; pass e.g. --speedup 1.5")
    plan = form.to_plan(form.solve())
    history = []
    section = sched = None
    for r in range(rounds):
        section, sched, _ = schedule_cache(pipe, steps=steps, full_computations=full_computations, speedup=speedup,
                                           method=method, unit=unit, plan=plan, warmup=warmup, max_reuse=max_reuse,
                                           guidance_scale=guidance_scale, **measure_options)
        history.append({"round": r, "objective": float(plan.predictions.get("objective", 0.0)),
                        "cache_error": float(sched.error), "compute": "".join("C" if c else "." for c in sched.compute),
                        "formats": plan.format_counts()})
        if r == rounds - 1:
            break
        # re-solve with each layer's error weighted by how the schedule uses it
        usage = usage_weights(info, CacheUnit.from_dict(section["unit"]), sched)
        weighted = formulate(profile, config=cfg, step_weights=usage)
        sol = weighted.solve()
        if sol.assignment(weighted.problem) == plan.layers:
            break
        created = plan.provenance["created"]
        plan = weighted.to_plan(sol, provenance={"step_weights": "cache schedule usage (see cache_rounds)",
                                                 "created": created})
    assert section is not None and sched is not None  # rounds >= 1: the loop ran
    share = section["share"]
    k = sum(section["compute"])
    plan.cache = section
    plan.predictions["cache"] = {"full_computations": k, "steps": steps, "predicted_error": float(sched.error),
                                 "ideal_speedup": None if share is None else round(ideal_speedup(k, steps, share), 4),
                                 "ideal_speedup_all_skipped": round(steps / k, 4)}
    plan.provenance["cache_rounds"] = history

    validate_cache_section(plan.cache)
    return plan
