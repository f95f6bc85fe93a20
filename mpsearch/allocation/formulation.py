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
import warnings
from dataclasses import dataclass

from mpsearch.allocation.compute import ComputeModel, compute_problem, parse_compute, record_layer_calls
from mpsearch.allocation.endtoend import activation_overrides, e2e_costs
from mpsearch.allocation.objective import build_problem, layer_costs, parse_pins, resolve_metric, step_errors
from mpsearch.allocation.solvers import Problem, Solution, get_solver, min_feasible_bytes
from mpsearch.budget import Budget, format_bytes, parse_budget
from mpsearch.errors import InfeasibleError, UsageError
from mpsearch.models import DEFAULT_ROLE_PINS, resolve_role_pins
from mpsearch.plan import Plan
from mpsearch.profiling.store import Profile

__all__ = ["COMPUTE_COSTS", "Formulation", "build_problem", "budget_keywords", "check_compute", "formulate",
           "layer_costs", "parse_pins", "parse_profile_budget", "resolve_metric", "step_errors"]

#: what a compute budget can be priced in: bit operations, or the profile's measured latency table
COMPUTE_COSTS = ("bops", "latency")


def budget_keywords(info) -> dict:
    """The model sizes ``parse_budget`` needs for ``%`` and ``bits`` budgets (the one place they are gathered)."""
    return dict(fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes, quantizable_numel=info.quantizable_numel)


def parse_profile_budget(profile: Profile, budget) -> Budget:
    """``budget`` (any form of docs/design.md's Budgets, or a byte count) for the profiled model's denoiser."""
    return parse_budget(budget, **budget_keywords(profile.info))


def check_compute(profile: Profile, compute, compute_cost: str | None = "bops"):
    """Check a compute budget before any work: returns its cost, ``"bops"`` or the profile's LatencyTable;
    a malformed budget or a missing latency table is a UsageError naming the fix."""
    compute_cost = "bops" if compute_cost is None else compute_cost
    if compute_cost not in COMPUTE_COSTS:
        raise UsageError(f"compute_cost must be one of {', '.join(COMPUTE_COSTS)}, got {compute_cost!r}")
    cost = "bops"
    if compute_cost == "latency":
        cost = profile.latency()
        if cost is None:
            raise UsageError(f"profile {profile.path} has no latency table for --compute-cost latency; measure one "
                             f"on this machine with `mpsearch profile --latency --out {profile.path}` (it keeps the "
                             "profile's measurements)")
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
    step_weights: list | None = None
    objective_weights: object = None
    fp_act_windows: int = 0
    end_to_end: dict | None = None
    compute: ComputeModel | None = None
    compute_spec: str | None = None
    latency: object = None

    def with_budget(self, budget) -> "Formulation":
        """The same formulation under another budget (any budget form, bytes, or None for none)."""
        b = None if budget is None else parse_profile_budget(self.profile, budget)
        return dataclasses.replace(self, budget=b, problem=self.problem.with_budget(None if b is None else b.bytes))

    def solve(self, solver="ilp") -> Solution:
        """Solve the problem with ``solver`` (a registered name or a solver instance). An infeasible budget
        raises InfeasibleError with the smallest feasible size (and, under the default role pins, the size
        without them)."""
        try:
            return get_solver(solver).solve(self.problem)
        except InfeasibleError as e:
            raise self._without_role_pins_hint(e) from None

    def decode(self, choice) -> tuple[dict, list]:
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
               "step_weights": None if self.step_weights is None else [float(x) for x in self.step_weights],
               "profile_digest": self.profile.digest, "profile_config": self.profile.config}
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
            provenance={**self.provenance(solution), **(provenance or {})})
        if plan.predicted_bytes != solution.total_bytes:
            raise AssertionError(f"plan bytes {plan.predicted_bytes} != solver bytes {solution.total_bytes}")
        return plan

    def compute_info(self, choice=None) -> dict | None:
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


def formulate(profile, budget=None, *, metric: str = "auto", objective_weights=None, step_weights=None,
              pins=None, role_pins=None, tie: bool = False, max_damage: float | None = None,
              fp_act_windows: int = 0, compute=None, compute_cost: str = "bops", act_windows: int = 2,
              pipe=None, layer_calls=None, weights=None) -> Formulation:
    """Profile (or its path) + budget + objective -> :class:`Formulation`.

    * ``budget``: any docs/design.md budget form or bytes; None for a sweep (``Formulation.with_budget`` sets one).
    * ``metric``: ``"auto"`` (``gn`` where measured, else ``rel_mse``) or a profile metric.
    * ``step_weights``: one weight per profiled step (or an (layers, steps) array) for the local costs.
    * ``pins`` ({regex: format} or 'regex=format' strings) override the role pins; ``role_pins`` ({role:
      format}; None: ``models.DEFAULT_ROLE_PINS``; ``{}``: none); ``tie``: layers reading one input share a format.
    * ``objective_weights`` ('content=1,quality=1' or a dict), ``max_damage``, ``fp_act_windows``: the
      decoupled end-to-end objective (``mpsearch profile --end-to-end``), see ``endtoend.e2e_costs``.
    * ``compute`` ('50%', '3.2e9', or with ``compute_cost="latency"`` '12ms'): a compute budget beside memory,
      with activation precision per window of steps (``act_windows`` windows) as a choice; it needs the
      model's layer calls: ``pipe`` (recorded here) or ``layer_calls`` (``compute.record_layer_calls``).
    * ``weights``: the old name of ``objective_weights`` (deprecated).
    """
    if weights is not None:
        warnings.warn("weights= is deprecated (it is not the weights digest); use objective_weights=",
                      DeprecationWarning, stacklevel=3)
        if objective_weights is not None:
            raise UsageError("give objective_weights= only (weights= is its deprecated old name), not both")
        objective_weights = weights
    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    info = profile.info
    metric = resolve_metric(profile, metric)
    b = None if budget is None else parse_profile_budget(profile, budget)
    nbytes = None if b is None else b.bytes
    decoupled = objective_weights is not None or max_damage is not None or bool(fp_act_windows)
    if compute is not None and decoupled:
        raise UsageError("a compute budget prices the local objective; it does not combine with objective_weights, "
                         "max_damage or fp_act_windows (fp-activation windows are its own choice): drop one")
    cost, e2e = None, None
    if decoupled:
        keep = resolve_role_pins(info, profile.formats, role_pins)  # minimax never rules out a role pin
        cost, e2e = e2e_costs(profile, objective_weights, step_weights=step_weights, max_damage=max_damage,
                              keep=keep)
        metric, step_weights = "e2e", e2e["step_weights"]
    problem = build_problem(profile, nbytes, metric="rel_mse" if cost is not None else metric,
                            step_weights=step_weights, pins=pins, tie=tie, role_pins=role_pins, cost=cost)
    form = Formulation(profile, problem, b, metric, parse_pins(pins), role_pins, tie,
                       step_weights=None if step_weights is None else list(step_weights),
                       objective_weights=objective_weights, fp_act_windows=int(fp_act_windows or 0),
                       end_to_end=e2e)
    if compute is None:
        return form
    priced = check_compute(profile, compute, compute_cost)
    if layer_calls is None:
        if pipe is None:
            raise UsageError("a compute budget needs the model's layer calls: pass pipe=load_pipeline(...) (or "
                             "layer_calls=record_layer_calls(...))")
        layer_calls = record_layer_calls(pipe, info, steps=profile.steps, windows=act_windows,
                                         formats=profile.formats[1:])
    cm = compute_problem(profile, problem, layer_calls, compute, metric=metric, cost=priced)
    return dataclasses.replace(form, problem=cm.problem, compute=cm, compute_spec=str(compute),
                               latency=None if isinstance(priced, str) else priced)


def as_formulation(profile, budget, caller: str, **objective) -> Formulation:
    """``profile`` as a Formulation at ``budget``: a Formulation given as is (re-budgeted), else
    ``formulate(profile, budget, **objective)``; objective keywords beside a Formulation are an error."""
    if isinstance(profile, Formulation):
        if objective:
            raise UsageError(f"{caller} got a Formulation and objective keywords ({', '.join(objective)}); put "
                             "them in formulate() instead")
        return profile.with_budget(budget)
    return formulate(profile, budget, **objective)
