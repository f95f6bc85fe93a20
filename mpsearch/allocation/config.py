""":class:`SolveConfig`: everything that decides a plan from a profile, in one frozen, validated value.

``solve``, ``formulate``, ``pareto``, ``refine``, ``solve_joint`` and the CLI share it: build it once
(``SolveConfig(budget="600KB", tie=True)``) or let those functions build it from the same keywords
(``mpsearch.solve(profile, budget="600KB", tie=True)``). Every field is checked when the config is made, so bad
input is a one-line :class:`~mpsearch.errors.UsageError` (a BudgetError for a budget) before any work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from mpsearch.allocation.compute import parse_compute
from mpsearch.allocation.decoupled.costs import parse_weights
from mpsearch.allocation.objective import parse_pins
from mpsearch.allocation.solvers import BaseSolver
from mpsearch.allocation.solvers.registry import DEFAULT_SOLVER
from mpsearch.budget import Budget, parse_budget
from mpsearch.errors import UsageError

__all__ = ["COMPUTE_COSTS", "SolveConfig", "make_config"]

#: what a compute budget can be priced in: bit operations, or the profile's measured latency table
COMPUTE_COSTS = ("bops", "latency")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}; pass e.g. {name}={max(low, 2)}")


@dataclass(frozen=True)
class SolveConfig:
    """How to turn a profile into a plan (every field optional; the defaults are ``mpsearch solve``'s).

    * ``budget``: any budget form of docs/design.md (``"600KB"``, ``"60%"``, ``"4.5bits"``) or bytes; None: no
      budget (a sweep sets one per point).
    * ``metric``: ``"auto"`` (``gn`` where measured, else ``rel_mse``) or a profile metric.
    * ``solver``: a registered name (``"cbc"``, ``"highs"``, ``"greedy"``, ...) or a solver instance.
    * ``pins`` ({regex: format} or 'regex=format' strings) override ``role_pins`` ({role: format}; None:
      ``models.DEFAULT_ROLE_PINS``; ``{}``: none); ``tie``: layers reading one input share a format.
    * ``step_weights``: one weight per profiled step (or a (layers, steps) array) for the local costs.
    * ``objective_weights`` ('content=1,quality=1' or a dict), ``max_damage`` (in (0, 1]),
      ``fp_act_windows``: the decoupled end-to-end objective (``mpsearch profile --end-to-end``).
    * ``compute`` ('50%', bit operations, or with ``compute_cost="latency"`` seconds such as '12ms'): a compute
      budget per denoiser call, activation precision per window of steps (``act_windows``) a choice.
    * ``allow_partial``: solve a profile that lacks some of its units (a shard) instead of refusing it.
    """

    budget: Budget | str | float | None = None
    metric: str = "auto"
    solver: str | BaseSolver = DEFAULT_SOLVER
    pins: object = None
    role_pins: dict | None = None
    tie: bool = False
    step_weights: object = None
    objective_weights: object = None
    max_damage: float | None = None
    fp_act_windows: int = 0
    compute: object = None
    compute_cost: str = "bops"
    act_windows: int = 2
    allow_partial: bool = False

    def __post_init__(self) -> None:
        if self.budget is not None and not isinstance(self.budget, Budget):
            parse_budget(self.budget, fp_bytes=1, quantizable_numel=1)  # its form; the model gives the bytes
        if not isinstance(self.metric, str) or not self.metric:
            raise UsageError(f"metric must be a name such as 'auto', 'gn' or 'rel_mse', got {self.metric!r}")
        if not isinstance(self.solver, (str, BaseSolver)):
            raise UsageError(f"solver must be a solver name (e.g. {DEFAULT_SOLVER!r}) or a solver instance, "
                             f"got {self.solver!r}")
        parse_pins(self.pins)
        if self.role_pins is not None and not isinstance(self.role_pins, dict):
            raise UsageError(f"role_pins must be a {{role: format}} mapping ({{}}: none) or None (the defaults), "
                             f"got {self.role_pins!r}")
        for name in ("tie", "allow_partial"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise UsageError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.step_weights is not None:
            self._check_step_weights()
        if self.objective_weights is not None:
            parse_weights(self.objective_weights)
        if self.max_damage is not None and (isinstance(self.max_damage, bool) or not isinstance(self.max_damage, Real)
                                            or not 0 < float(self.max_damage) <= 1):
            raise UsageError(f"max_damage must be a number in (0, 1] (a fraction of the largest damage), got "
                             f"{self.max_damage!r}")
        _check_int("fp_act_windows", self.fp_act_windows, 0)
        _check_int("act_windows", self.act_windows, 1)
        cost = "bops" if self.compute_cost is None else self.compute_cost
        if cost not in COMPUTE_COSTS:
            raise UsageError(f"compute_cost must be one of {', '.join(COMPUTE_COSTS)}, got {self.compute_cost!r}")
        object.__setattr__(self, "compute_cost", cost)
        if self.compute is not None:
            parse_compute(self.compute, 1.0, "bops" if cost == "bops" else "s")

    def _check_step_weights(self) -> None:
        try:
            w = np.asarray(self.step_weights, dtype=float)
        except (TypeError, ValueError):
            raise UsageError(f"step_weights must be numbers (one per profiled step), got {self.step_weights!r}") \
                from None
        if w.ndim not in (1, 2) or w.size == 0 or not np.isfinite(w).all() or (w < 0).any():
            raise UsageError(f"step_weights must be finite numbers >= 0, one per profiled step (or a (layers, "
                             f"steps) array), got shape {w.shape}; pass e.g. [1, 1, 2, 2]")

    @property
    def decoupled(self) -> bool:
        """Whether the objective is the decoupled end-to-end one (``profile --end-to-end``)."""
        return self.objective_weights is not None or self.max_damage is not None or bool(self.fp_act_windows)

    def replace(self, **changes: Any) -> SolveConfig:
        """A copy with ``changes`` (validated again)."""
        return make_config(self, **changes)


_FIELDS = tuple(f.name for f in dataclasses.fields(SolveConfig))


def make_config(config: SolveConfig | None = None, caller: str = "solve", **keywords: Any) -> SolveConfig:
    """``config`` with ``keywords`` replacing its fields (a new default config when None); an unknown keyword is
    a UsageError naming the valid ones."""
    unknown = sorted(set(keywords) - set(_FIELDS))
    if unknown:
        raise UsageError(f"{caller}() got unknown keyword(s) {', '.join(unknown)}; valid: {', '.join(_FIELDS)}")
    if config is None:
        return SolveConfig(**keywords)
    if not isinstance(config, SolveConfig):
        raise UsageError(f"config must be a SolveConfig, got {type(config).__name__}; build one with "
                         "mpsearch.allocation.SolveConfig(...)")
    return dataclasses.replace(config, **keywords) if keywords else config
