"""The one path from a profile to a Plan: profile + budget + objective -> :class:`Formulation` -> Plan.

Every caller (``mpsearch.solve``, Pareto sweeps, the Optuna refinement, the joint quantization + cache solve,
the CLI) goes through :func:`formulate`: it loads the profile, resolves the metric, parses the budget,
builds the solver's Problem (local costs, or the decoupled end-to-end objective, optionally with a compute
budget and its activation-window variants), and keeps everything the plan's provenance records.
:meth:`Formulation.solve` runs a solver (a registered name or an instance) and :meth:`Formulation.to_plan`
turns its answer into the Plan. The array-level pieces (``layer_costs``, ``parse_pins``, ``build_problem``)
live in :mod:`mpsearch.allocation.objective` and are importable from here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpsearch.allocation.compute import ComputeModel, LayerCalls, compute_problem, parse_compute, record_layer_calls
from mpsearch.allocation.config import COMPUTE_COSTS, SolveConfig, make_config
from mpsearch.allocation.decoupled import activation_overrides, e2e_costs
from mpsearch.allocation.objective import build_problem, parse_pins, resolve_metric
from mpsearch.allocation.solvers import DEFAULT_SOLVER, BaseSolver, Problem, Solution, get_solver, min_feasible_bytes
from mpsearch.budget import Budget, format_bytes, parse_budget
from mpsearch.errors import InfeasibleError, UsageError
from mpsearch.formats.variant import variant_layers
from mpsearch.models import DEFAULT_ROLE_PINS, ModelInfo, resolve_role_pins
from mpsearch.plan import Plan
from mpsearch.profiling.latency import LatencyTable
from mpsearch.profiling.store import Profile

__all__ = ["COMPUTE_COSTS", "Formulation", "SolveConfig", "budget_keywords", "check_compute", "formulate",
           "parse_profile_budget"]


def budget_keywords(info: ModelInfo) -> dict:
    """The model sizes ``parse_budget`` needs for ``%`` and ``bits`` budgets (the one place they are gathered)."""
    return dict(fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes, quantizable_numel=info.quantizable_numel)


def parse_profile_budget(profile: Profile, budget: Budget | str | float) -> Budget:
    """``budget`` (any form of docs/design.md's Budgets, or a byte count) for the profiled model's denoiser."""
    return parse_budget(budget, **budget_keywords(profile.info))


def check_compute(profile: Profile, compute: object, compute_cost: str | None = "bops") -> str | LatencyTable:
    """Check a compute budget before any work: returns its cost, ``"bops"`` or the profile's LatencyTable;
    a malformed budget or a missing latency table is a UsageError naming the fix."""
    compute_cost = "bops" if compute_cost is None else compute_cost
    if compute_cost not in COMPUTE_COSTS:
        raise UsageError(f"compute_cost must be one of {', '.join(COMPUTE_COSTS)}, got {compute_cost!r}")
    cost: str | LatencyTable = "bops"
    if compute_cost == "latency":
        table = profile.latency()
        if table is None:
            raise UsageError(f"profile {profile.path} has no latency table for --compute-cost latency; measure one "
                             f"on this machine with `mpsearch profile --latency --out {profile.path}` (it keeps the "
                             "profile's measurements)")
        cost = table
    parse_compute(compute, 1.0, "bops" if isinstance(cost, str) else "s")
    return cost


@dataclass
class Formulation:
    """A profile's allocation problem and everything its plans record (built by :func:`formulate`).

    ``problem`` is the solver's Problem (``budget_bytes`` None for sweeps); ``metric`` the resolved metric
    (``"e2e"`` for the decoupled objective); ``compute`` the :class:`ComputeModel` when there is a compute
    budget (its columns are format variants, read back by :meth:`decode`)."""

    profile: Profile
    problem: Problem
    budget: Budget | None
    metric: str
    pins: dict
    role_pins: dict | None
    tie: bool
    step_weights: np.ndarray | None = None  # one weight per step, or (layers, steps)
    objective_weights: object = None
    fp_act_windows: int = 0
    end_to_end: dict | None = None
    compute: ComputeModel | None = None
    compute_spec: str | None = None
    latency: LatencyTable | None = None
    config: SolveConfig | None = None

    def with_budget(self, budget: Budget | str | float | None) -> Formulation:
        """The same formulation under another budget (any budget form, bytes, or None for none)."""
        b = None if budget is None else parse_profile_budget(self.profile, budget)
        config = None if self.config is None else self.config.replace(budget=b)
        return dataclasses.replace(self, budget=b, problem=self.problem.with_budget(None if b is None else b.bytes),
                                   config=config)

    def solve(self, solver: str | BaseSolver | None = None) -> Solution:
        """Solve the problem with ``solver`` (a registered name or a solver instance; None: the config's). An
        infeasible budget raises InfeasibleError with the smallest feasible size (and, under the default role
        pins, the size without them)."""
        if solver is None:
            solver = DEFAULT_SOLVER if self.config is None else self.config.solver
        try:
            return get_solver(solver).solve(self.problem)
        except InfeasibleError as e:
            raise self._without_role_pins_hint(e) from None

    def decode(self, choice: Any) -> tuple[dict, list]:
        """A per-layer choice -> (layer -> format, plan overrides)."""
        if self.compute is not None:
            return self.compute.decode(choice)
        return self.problem.assignment(choice), []

    def provenance(self, solution: Solution) -> dict:
        """How a plan from ``solution`` was made: solver, objective, metric, pins, role pins, step weights,
        profile digest and configuration, and the end-to-end and compute settings."""
        out = {"solver": solution.solver, "status": solution.status, "seconds": round(float(solution.seconds), 4),
               "metric": self.metric, "tie": bool(self.tie), "pins": dict(self.pins),
               "role_pins": {getattr(r, "value", r): f for r, f in
                             (DEFAULT_ROLE_PINS if self.role_pins is None else self.role_pins).items()},
               "step_weights": _step_weights_record(self.step_weights),
               "profile_digest": self.profile.digest, "profile_config": self.profile.config}
        if self.profile.model_source is not None:  # where the model was loaded from: commands load it again
            out["model_source"] = self.profile.model_source
        if self.end_to_end is not None:
            out["end_to_end"] = self.end_to_end
        if self.compute is not None:
            out.update(compute=self.compute_spec, compute_cost=self.compute.kind)
            if self.latency is not None:
                out["latency"] = {"device": self.latency.device, **{k: self.latency.meta.get(k) for k in
                                                                    ("torch", "threads", "measured_at")}}
        return out

    def to_plan(self, solution: Solution, *, predictions: dict | None = None, provenance: dict | None = None) -> Plan:
        """The Plan of ``solution`` with full provenance; ``predictions``/``provenance`` add caller entries."""
        assignment, overrides = self.decode(solution.choice)
        if self.fp_act_windows:
            overrides = activation_overrides(self.profile, assignment, self.fp_act_windows,
                                             weights=self.objective_weights)
        preds = {"objective": float(solution.objective), "metric": self.metric,
                 "formats": {f: int((solution.choice == i).sum()) for i, f in enumerate(self.problem.formats)}}
        if self.compute is not None:
            preds.update(self.compute.predictions(solution.choice))
        plan = Plan.from_assignment(
            self.profile.info, assignment, budget=None if self.budget is None else self.budget.to_dict(),
            weights=self.profile.weights, overrides=overrides, predictions={**preds, **(predictions or {})},
            provenance={**self.provenance(solution), **(provenance or {})},
            calibration=self.profile.calibration(variant_layers(assignment)))
        if plan.predicted_bytes != solution.total_bytes:
            raise AssertionError(f"plan bytes {plan.predicted_bytes} != solver bytes {solution.total_bytes}")
        return plan

    def compute_info(self, choice: Any = None) -> dict | None:
        """The compute budget in numbers (cost, unit, limit, full precision's), with ``choice``'s prediction."""
        cm = self.compute
        if cm is None:
            return None
        out = {"cost": cm.kind, "unit": cm.unit, "limit": cm.limit, "full": cm.full, "windows": cm.windows}
        if cm.kind == "bops":
            out.update(limit_bops=cm.limit, full_bops=cm.full)
        else:
            out.update({k: cm.info.get(k) for k in ("device", "torch", "threads", "measured_at")})
        if choice is not None:
            out["predicted"] = cm.value(choice)
        return out

    def _without_role_pins_hint(self, err: InfeasibleError) -> InfeasibleError:
        """Add to an infeasible-budget error how small the model gets without the default role pins."""
        if self.role_pins is not None or err.min_bytes is None:
            return err
        unpinned = build_problem(self.profile, None, pins=self.pins, tie=self.tie, role_pins={})
        lowest = min_feasible_bytes(unpinned)
        if lowest >= err.min_bytes:
            return err
        return InfeasibleError(f"{err} (the default role pins keep fragile layers at higher precision; without "
                               f"them, --role-pins none, the smallest feasible size is {lowest:,} B "
                               f"({format_bytes(lowest)}))", min_bytes=err.min_bytes)


def formulate(profile: Any, budget: Any = None, *, config: SolveConfig | None = None, pipe: Any = None,
              layer_calls: LayerCalls | None = None, **keywords: Any) -> Formulation:
    """Profile (or its path) + :class:`~mpsearch.allocation.config.SolveConfig` -> :class:`Formulation`.

    ``config`` holds the budget, objective and constraints; ``keywords`` (its field names: ``metric``, ``pins``,
    ``role_pins``, ``tie``, ``step_weights``, ``objective_weights``, ``compute``, ...) build one or replace its
    fields, and ``budget`` (any budget form of docs/design.md or bytes; None: the config's, or none for a sweep)
    replaces its budget. A compute budget needs the model's layer calls: ``pipe`` (recorded here) or ``layer_calls``
    (``compute.record_layer_calls``). A profile that lacks some of its units is refused unless
    ``allow_partial``.
    """
    if budget is not None:
        keywords["budget"] = budget
    cfg = make_config(config, "formulate", **keywords)
    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    if not cfg.allow_partial:
        profile.check_complete()
    info = profile.info
    metric = resolve_metric(profile, cfg.metric)
    b = None if cfg.budget is None else parse_profile_budget(profile, cfg.budget)
    nbytes = None if b is None else b.bytes
    step_weights = cfg.step_weights
    if cfg.compute is not None and cfg.decoupled:
        raise UsageError("a compute budget prices the local objective; it does not combine with objective_weights, "
                         "max_damage or fp_act_windows (fp-activation windows are its own choice): drop one")
    cost, e2e = None, None
    if cfg.decoupled:
        keep = resolve_role_pins(info, profile.formats, cfg.role_pins)  # minimax never rules out a role pin
        cost, e2e = e2e_costs(profile, cfg.objective_weights, step_weights=step_weights, max_damage=cfg.max_damage,
                              keep=keep)
        metric, step_weights = "e2e", e2e["step_weights"]
    problem = build_problem(profile, nbytes, metric="rel_mse" if cost is not None else metric,
                            step_weights=step_weights, pins=cfg.pins, tie=cfg.tie, role_pins=cfg.role_pins, cost=cost)
    form = Formulation(profile, problem, b, metric, parse_pins(cfg.pins), cfg.role_pins, cfg.tie,
                       step_weights=None if step_weights is None else np.array(step_weights, dtype=float),
                       objective_weights=cfg.objective_weights, fp_act_windows=int(cfg.fp_act_windows),
                       end_to_end=e2e, config=cfg)
    if cfg.compute is None:
        return form
    priced = check_compute(profile, cfg.compute, cfg.compute_cost)
    if layer_calls is None:
        if pipe is None:
            raise UsageError("a compute budget needs the model's layer calls: pass pipe=load_pipeline(...) (or "
                             "layer_calls=record_layer_calls(...))")
        layer_calls = record_layer_calls(pipe, info, steps=profile.steps, windows=cfg.act_windows,
                                         formats=profile.formats[1:])
    cm = compute_problem(profile, problem, layer_calls, cfg.compute, metric=metric, cost=priced)
    return dataclasses.replace(form, problem=cm.problem, compute=cm, compute_spec=str(cfg.compute),
                               latency=None if isinstance(priced, str) else priced)


def _step_weights_record(weights) -> list | dict | None:
    """What a plan's provenance records of the step weights: one weight per step as numbers; per-layer weights
    (a (layers, steps) array, e.g. the joint solve's schedule usage) by their shape and digest."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=float)
    if w.ndim == 1:
        return [float(x) for x in w]
    return {"shape": list(w.shape), "sha256": hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()[:16]}


def as_formulation(profile: Any, budget: Any, caller: str, config: SolveConfig | None = None,
                   **objective: Any) -> Formulation:
    """``profile`` as a Formulation at ``budget``: a Formulation given as is (re-budgeted), else
    ``formulate(profile, budget, config=config, **objective)``; a config or objective keywords beside a
    Formulation are an error."""
    if isinstance(profile, Formulation):
        if objective or config is not None:
            given = ", ".join([*objective, *(["config"] if config is not None else [])])
            raise UsageError(f"{caller} got a Formulation and objective keywords ({given}); put them in "
                             "formulate() instead")
        return profile.with_budget(budget)
    return formulate(profile, budget, config=config, **objective)
