"""The array-level allocation problem, its solution, and the contract every solver keeps.

This module knows nothing of models or profiles. A higher layer turns a profile and a budget into a
:class:`Problem` (one row per quantizable layer, one column per number format); a solver turns the
problem into a :class:`Solution` (one format per layer). The problem, in words::

    choose one format f(l) for every layer l
    minimize    sum_l cost[l, f(l)]
    subject to  f(l) is allowed for l           (cost[l, f] < inf)
                f(l) == pins[l]                 (for every pinned layer)
                f(l) == f(m)                    (for l, m in one tie group)
                fixed_bytes + sum_l nbytes[l, f(l)] <= budget_bytes        (unless budget is None)
                sum_l coef[l, f(l)] <= rhs      (for every extra Constraint)

Tie groups collapse to one decision each (:class:`Decisions`), so solvers work on decisions, not layers.
"""

from __future__ import annotations

import abc
import inspect
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, TypeVar

import numpy as np

from mpsearch.budget import format_bytes  # one formatter for every size message
from mpsearch.errors import InfeasibleError, MpsearchError, UsageError

__all__ = [
    "BaseSolver",
    "Constraint",
    "Decisions",
    "NoSolutionFoundError",
    "Problem",
    "Solution",
    "SolverError",
    "available_solvers",
    "check_assignment",
    "format_bytes",
    "get_solver",
    "min_feasible_bytes",
    "register_solver",
]


class SolverError(MpsearchError):
    """A solver failed: it stopped without an answer, or (a bug) returned an answer that breaks a constraint."""


class NoSolutionFoundError(SolverError):
    """A heuristic found no feasible assignment although one may exist; an exact solver can tell for sure."""


def _extra_tolerance(rhs: float, coef_scale: float) -> float:
    """How far over its limit an extra constraint may be and still count as kept (float round-off only)."""
    return 1e-9 * max(1.0, abs(rhs), coef_scale)


def resource_tables(problem) -> tuple[np.ndarray, np.ndarray]:
    """Per-decision resource use and limits for heuristics: ``(use (R, D, F), caps (R,))``, one row for the
    byte budget (net of fixed bytes, if any) and one per extra constraint (with half its round-off tolerance)."""
    dec = problem.decisions
    tables, caps = [], []
    if problem.budget_bytes is not None:
        tables.append(dec.nbytes.astype(np.float64))
        caps.append(float(problem.budget_bytes - problem.fixed_bytes))
    for k, con in enumerate(problem.extra):
        scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
        tables.append(dec.extra[k])
        caps.append(con.rhs + _extra_tolerance(con.rhs, scale) / 2)
    if not tables:
        return np.zeros((0,) + dec.allowed.shape), np.zeros(0)
    return np.stack(tables), np.array(caps)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


# --------------------------------------------------------------------------------------------- problem


@dataclass(frozen=True, eq=False, repr=False)
class Constraint:
    """One extra linear constraint ``sum_{l,f} coef[l, f] * x[l, f] <= rhs`` (e.g. a compute budget).

    ``x[l, f]`` is 1 when layer ``l`` takes format ``f``, so the left side is ``sum_l coef[l, f(l)]``.
    ``coef`` must be finite everywhere (entries for formats a layer may not take are ignored).
    """

    name: str
    coef: np.ndarray
    rhs: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise UsageError(f"Constraint.name must be a non-empty string, got {self.name!r}")
        try:
            coef = np.array(self.coef, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"Constraint {self.name!r}: coef must be a 2-D array of numbers ({exc})") from None
        if coef.ndim != 2:
            raise UsageError(f"Constraint {self.name!r}: coef must be 2-D (layers x formats), got shape {coef.shape}")
        if not np.isfinite(coef).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(coef))[0])
            raise UsageError(
                f"Constraint {self.name!r}: coef{list(bad)} is {coef[bad]}; coefficients must be finite"
            )
        if not isinstance(self.rhs, (int, float, np.integer, np.floating)) or isinstance(self.rhs, bool):
            raise UsageError(f"Constraint {self.name!r}: rhs must be a number, got {self.rhs!r}")
        if not math.isfinite(float(self.rhs)):
            raise UsageError(f"Constraint {self.name!r}: rhs must be finite, got {self.rhs!r}")
        object.__setattr__(self, "coef", _frozen(coef))
        object.__setattr__(self, "rhs", float(self.rhs))

    def value(self, choice: np.ndarray) -> float:
        """The left side ``sum_l coef[l, choice[l]]`` for a per-layer format choice."""
        choice = np.asarray(choice)
        return math.fsum(self.coef[np.arange(len(choice)), choice].tolist())

    def __repr__(self) -> str:
        return f"Constraint(name={self.name!r}, coef=<{self.coef.shape[0]}x{self.coef.shape[1]}>, rhs={self.rhs!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Decisions:
    """A problem with its tie groups collapsed: one decision per group (or ungrouped layer).

    Built once by :class:`Problem` (``problem.decisions``); solvers work on it. Decision ``d`` covers the
    layers ``members[d]`` (sorted), decisions are ordered by their first layer. For every decision and
    format, ``cost``/``nbytes``/``extra`` are the sums over the members. ``allowed[d, f]`` is True when every
    member may take ``f`` and no pin rules it out; ``cost`` is inf and ``nbytes`` 0 where it is False.
    """

    members: tuple[np.ndarray, ...]
    layer_decision: np.ndarray  # (L,) decision index of each layer
    allowed: np.ndarray  # (D, F) bool
    cost: np.ndarray  # (D, F) float, inf where not allowed
    nbytes: np.ndarray  # (D, F) int64, 0 where not allowed
    extra: np.ndarray  # (K, D, F) float, 0 where not allowed

    @property
    def count(self) -> int:
        return len(self.members)

    def expand(self, decision_choice: np.ndarray) -> np.ndarray:
        """Per-decision format indices -> per-layer format indices (int64, shape (L,))."""
        return np.asarray(decision_choice, dtype=np.int64)[self.layer_decision]

    def best(self) -> np.ndarray:
        """Each decision's cheapest allowed format (ties: fewer bytes, then the lower format index)."""
        if not self.count:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(np.lexsort((self.nbytes, self.cost), axis=-1)[:, 0], dtype=np.int64)

    def smallest(self) -> np.ndarray:
        """Each decision's allowed format with the fewest bytes (ties: lower cost, then lower index)."""
        if not self.count:
            return np.zeros(0, dtype=np.int64)
        big = np.where(self.allowed, self.nbytes, np.iinfo(np.int64).max)
        return np.asarray(np.lexsort((self.cost, big), axis=-1)[:, 0], dtype=np.int64)

    def __repr__(self) -> str:
        return f"Decisions({self.count} decisions x {self.allowed.shape[1]} formats)"


@dataclass(frozen=True, eq=False, repr=False)
class Problem:
    """One mixed-precision allocation problem over arrays (see the module docstring for the math).

    Fields
    ------
    layer_names : L unique names (only used to label the answer).
    formats : F unique format names, e.g. ``("fp", "int8", "nvfp4", "int4")``.
    cost : (L, F) float, >= 0: the objective contribution of layer ``l`` in format ``f``; ``np.inf`` means the
        layer may not take that format (ineligible). Every layer needs at least one finite entry.
    nbytes : (L, F) integers >= 0: exact weight bytes of layer ``l`` in format ``f`` (ignored where cost is inf).
    fixed_bytes : bytes that never change (norms, biases, embeddings ...), counted in the budget.
    budget_bytes : total bytes allowed (``fixed_bytes`` + the chosen layers' bytes); None = unconstrained.
    groups : tie groups, disjoint tuples of layer indices that must share one format.
    pins : layer index -> the format index it must take. A pin on one member of a group pins the group.
    extra : extra linear constraints (:class:`Constraint`), e.g. a compute budget.

    Arrays are copied and made read-only; ``pins`` becomes a read-only mapping. Problems compare by identity.
    Every inconsistency raises :class:`~mpsearch.errors.UsageError` naming the field and the value.
    """

    layer_names: tuple[str, ...]
    formats: tuple[str, ...]
    cost: np.ndarray
    nbytes: np.ndarray
    fixed_bytes: int = 0
    budget_bytes: int | None = None
    groups: tuple[tuple[int, ...], ...] = ()
    pins: Mapping[int, int] = field(default_factory=dict)
    extra: tuple[Constraint, ...] = ()

    # ----------------------------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        names = self._names("layer_names", self.layer_names)
        formats = self._names("formats", self.formats)
        if not formats:
            raise UsageError("Problem.formats is empty; give at least one format name")
        n_layers, n_formats = len(names), len(formats)
        expected = (n_layers, n_formats)

        try:
            cost = np.array(self.cost, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"Problem.cost must be an array of numbers ({exc})") from None
        if cost.shape != expected:
            raise UsageError(
                f"Problem.cost has shape {cost.shape}, expected {expected} = (len(layer_names), len(formats))"
            )
        bad = np.isnan(cost) | (cost < 0) | np.isneginf(cost)
        if bad.any():
            l, f = (int(i) for i in np.argwhere(bad)[0])
            raise UsageError(
                f"Problem.cost[{l}, {f}] (layer {names[l]!r}, format {formats[f]!r}) is {cost[l, f]}; costs must be "
                "finite and >= 0, or inf for a format the layer may not take"
            )
        allowed = np.isfinite(cost)
        for l in np.flatnonzero(~allowed.any(axis=1)) if n_formats else ():
            raise UsageError(
                f"Problem.cost row {int(l)} (layer {names[l]!r}) is inf for every format; "
                "each layer needs at least one allowed format (fp usually)"
            )

        raw_nbytes = np.asarray(self.nbytes)
        if raw_nbytes.shape != expected:
            raise UsageError(
                f"Problem.nbytes has shape {raw_nbytes.shape}, expected {expected} = (len(layer_names), len(formats))"
            )
        if raw_nbytes.size and not np.issubdtype(raw_nbytes.dtype, np.integer):
            raise UsageError(f"Problem.nbytes must hold integers (exact bytes), got dtype {raw_nbytes.dtype}")
        nbytes = np.array(raw_nbytes, dtype=np.int64, copy=True)
        negative = allowed & (nbytes < 0)
        if negative.any():
            l, f = (int(i) for i in np.argwhere(negative)[0])
            raise UsageError(
                f"Problem.nbytes[{l}, {f}] (layer {names[l]!r}, format {formats[f]!r}) is {nbytes[l, f]}; must be >= 0"
            )

        if not _is_int(self.fixed_bytes) or self.fixed_bytes < 0:
            raise UsageError(f"Problem.fixed_bytes must be an integer >= 0, got {self.fixed_bytes!r}")
        if self.budget_bytes is not None and (not _is_int(self.budget_bytes) or self.budget_bytes < 0):
            raise UsageError(f"Problem.budget_bytes must be None or an integer >= 0, got {self.budget_bytes!r}")

        groups = self._groups(self.groups, n_layers)
        pins = self._pins(self.pins, names, formats, allowed)
        extra = tuple(self.extra)
        seen: set[str] = set()
        for k, con in enumerate(extra):
            if not isinstance(con, Constraint):
                raise UsageError(f"Problem.extra[{k}] must be a Constraint, got {type(con).__name__}")
            if con.coef.shape != expected:
                raise UsageError(f"Problem.extra[{k}] ({con.name!r}) has coef shape {con.coef.shape}, expected {expected}")
            if con.name in seen:
                raise UsageError(f"Problem.extra has two constraints named {con.name!r}; names must be unique")
            seen.add(con.name)

        set_ = object.__setattr__
        set_(self, "layer_names", names)
        set_(self, "formats", formats)
        set_(self, "cost", _frozen(cost))
        set_(self, "nbytes", _frozen(nbytes))
        set_(self, "fixed_bytes", int(self.fixed_bytes))
        set_(self, "budget_bytes", None if self.budget_bytes is None else int(self.budget_bytes))
        set_(self, "groups", groups)
        set_(self, "pins", MappingProxyType(pins))
        set_(self, "extra", extra)
        set_(self, "_decisions", self._collapse())

    @staticmethod
    def _names(field_name: str, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            raise UsageError(f"Problem.{field_name} must be a sequence of names, got the string {value!r}")
        try:
            names = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise UsageError(f"Problem.{field_name} must be a sequence of names, got {value!r}") from None
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise UsageError(f"Problem.{field_name}[{i}] must be a non-empty string, got {name!r}")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UsageError(f"Problem.{field_name} has {dup!r} twice; names must be unique")
        return names

    @staticmethod
    def _groups(value: object, n_layers: int) -> tuple[tuple[int, ...], ...]:
        try:
            groups = tuple(tuple(g) for g in value)  # type: ignore[union-attr]
        except TypeError:
            raise UsageError(f"Problem.groups must be a sequence of sequences of layer indices, got {value!r}") from None
        owner: dict[int, int] = {}
        for gi, group in enumerate(groups):
            if not group:
                raise UsageError(f"Problem.groups[{gi}] is empty; a tie group needs at least one layer")
            for l in group:
                if not _is_int(l) or not 0 <= l < n_layers:
                    raise UsageError(f"Problem.groups[{gi}] has {l!r}, not a layer index in [0, {n_layers})")
                if int(l) in owner:
                    where = "twice" if owner[int(l)] == gi else f"in groups[{owner[int(l)]}] too"
                    raise UsageError(f"Problem.groups[{gi}] has layer {int(l)} {where}; tie groups must be disjoint")
                owner[int(l)] = gi
        return tuple(tuple(int(l) for l in g) for g in groups)

    @staticmethod
    def _pins(value: object, names: tuple[str, ...], formats: tuple[str, ...], allowed: np.ndarray) -> dict[int, int]:
        if not isinstance(value, Mapping):
            raise UsageError(f"Problem.pins must be a mapping layer index -> format index, got {value!r}")
        pins: dict[int, int] = {}
        for l, f in value.items():
            if not _is_int(l) or not 0 <= l < len(names):
                raise UsageError(f"Problem.pins has key {l!r}, not a layer index in [0, {len(names)})")
            if not _is_int(f) or not 0 <= f < len(formats):
                raise UsageError(f"Problem.pins[{l}] is {f!r}, not a format index in [0, {len(formats)})")
            if not allowed[l, f]:
                raise UsageError(
                    f"Problem.pins[{l}] pins layer {names[l]!r} to format {formats[f]!r}, which it may not take "
                    "(its cost is inf)"
                )
            pins[int(l)] = int(f)
        return dict(sorted(pins.items()))

    def _collapse(self) -> Decisions:
        n_layers, n_formats = self.cost.shape
        layer_decision = np.full(n_layers, -1, dtype=np.int64)
        for gi, group in enumerate(self.groups):
            layer_decision[list(group)] = gi
        members_raw = [sorted(g) for g in self.groups]
        members_raw += [[l] for l in range(n_layers) if layer_decision[l] < 0]
        members_raw.sort(key=lambda m: m[0])
        members = tuple(_frozen(np.array(m, dtype=np.int64)) for m in members_raw)
        for d, m in enumerate(members):
            layer_decision[m] = d

        n_dec = len(members)
        allowed = np.isfinite(self.cost)
        dec_allowed = np.ones((n_dec, n_formats), dtype=bool)
        np.logical_and.at(dec_allowed, layer_decision, allowed)
        for d, m in enumerate(members):
            pinned = [(int(l), self.pins[int(l)]) for l in m if int(l) in self.pins]
            if pinned:
                formats_pinned = {f for _, f in pinned}
                if len(formats_pinned) > 1:
                    desc = ", ".join(f"layer {self.layer_names[l]!r} -> {self.formats[f]!r}" for l, f in pinned)
                    raise UsageError(f"Problem.pins disagree inside one tie group ({desc}); a group takes one format")
                (l0, f0) = pinned[0]
                if not dec_allowed[d, f0]:
                    bad = next(int(l) for l in m if not allowed[l, f0])
                    raise UsageError(
                        f"Problem.pins[{l0}] pins the tie group of layer {self.layer_names[l0]!r} to format "
                        f"{self.formats[f0]!r}, but layer {self.layer_names[bad]!r} in that group may not take it"
                    )
                dec_allowed[d] = False
                dec_allowed[d, f0] = True
            elif not dec_allowed[d].any():
                gi = next(i for i, g in enumerate(self.groups) if int(m[0]) in g)
                per = "; ".join(
                    f"{self.layer_names[l]!r}: {[self.formats[f] for f in np.flatnonzero(allowed[l])]}" for l in m
                )
                raise UsageError(
                    f"Problem.groups[{gi}] members share no allowed format ({per}); split the group or allow a "
                    "common format"
                )

        cost = np.zeros((n_dec, n_formats))
        np.add.at(cost, layer_decision, np.where(allowed, self.cost, 0.0))
        cost[~dec_allowed] = np.inf
        nbytes = np.zeros((n_dec, n_formats), dtype=np.int64)
        np.add.at(nbytes, layer_decision, np.where(allowed, self.nbytes, 0))
        nbytes[~dec_allowed] = 0
        extra = np.zeros((len(self.extra), n_dec, n_formats))
        for k, con in enumerate(self.extra):
            np.add.at(extra[k], layer_decision, con.coef)
            extra[k][~dec_allowed] = 0.0
        return Decisions(
            members=members,
            layer_decision=_frozen(layer_decision),
            allowed=_frozen(dec_allowed),
            cost=_frozen(cost),
            nbytes=_frozen(nbytes),
            extra=_frozen(extra),
        )

    # ---------------------------------------------------------------------------------------- views
    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def n_formats(self) -> int:
        return len(self.formats)

    @property
    def allowed(self) -> np.ndarray:
        """(L, F) bool: where ``cost`` is finite."""
        return np.isfinite(self.cost)

    @property
    def decisions(self) -> Decisions:
        """The problem with tie groups and pins collapsed (what solvers work on)."""
        return self._decisions  # type: ignore[attr-defined]

    def with_budget(self, budget_bytes: int | None) -> Problem:
        """The same problem under another budget (e.g. for a Pareto sweep)."""
        return replace(self, budget_bytes=budget_bytes, pins=dict(self.pins))

    def total_bytes(self, choice: np.ndarray) -> int:
        """``fixed_bytes`` + the bytes of every layer in its chosen format (exact)."""
        choice = np.asarray(choice, dtype=np.int64)
        return self.fixed_bytes + int(self.nbytes[np.arange(self.n_layers), choice].sum())

    def objective(self, choice: np.ndarray) -> float:
        """``sum_l cost[l, choice[l]]``, summed exactly rounded (math.fsum)."""
        choice = np.asarray(choice, dtype=np.int64)
        return math.fsum(self.cost[np.arange(self.n_layers), choice].tolist())

    def __repr__(self) -> str:
        return (
            f"Problem({self.n_layers} layers x formats {self.formats}, fixed_bytes={self.fixed_bytes:,}, "
            f"budget_bytes={'None' if self.budget_bytes is None else f'{self.budget_bytes:,}'}, "
            f"{len(self.groups)} groups, {len(self.pins)} pins, extra={tuple(c.name for c in self.extra)})"
        )


def min_feasible_bytes(problem: Problem) -> int:
    """The smallest total bytes any assignment can reach that keeps eligibility, pins and tie groups.

    Exact: per decision (tie group or single layer) the fewest bytes over the formats every member may take.
    ``extra`` constraints are ignored.
    """
    dec = problem.decisions
    return problem.fixed_bytes + int(dec.nbytes[np.arange(dec.count), dec.smallest()].sum())


def check_assignment(problem: Problem, choice: np.ndarray) -> list[str]:
    """Every way ``choice`` (one format index per layer) breaks ``problem``; empty when it keeps them all."""
    choice = np.asarray(choice)
    if choice.shape != (problem.n_layers,):
        return [f"choice has shape {choice.shape}, expected ({problem.n_layers},)"]
    if choice.size and not np.issubdtype(choice.dtype, np.integer):
        return [f"choice must hold integer format indices, got dtype {choice.dtype}"]
    out_of_range = (choice < 0) | (choice >= problem.n_formats)
    if out_of_range.any():
        l = int(np.flatnonzero(out_of_range)[0])
        return [f"layer {problem.layer_names[l]!r} has format index {int(choice[l])}, not in [0, {problem.n_formats})"]
    problems: list[str] = []
    rows = np.arange(problem.n_layers)
    for l in np.flatnonzero(~problem.allowed[rows, choice]):
        problems.append(f"layer {problem.layer_names[l]!r} takes {problem.formats[choice[l]]!r}, which it may not take")
    for l, f in problem.pins.items():
        if choice[l] != f:
            problems.append(
                f"layer {problem.layer_names[l]!r} is pinned to {problem.formats[f]!r} but takes "
                f"{problem.formats[choice[l]]!r}"
            )
    for gi, group in enumerate(problem.groups):
        taken = {int(choice[l]) for l in group}
        if len(taken) > 1:
            problems.append(f"tie group {gi} mixes formats {sorted(problem.formats[f] for f in taken)}")
    if problem.budget_bytes is not None:
        total = problem.total_bytes(choice)
        if total > problem.budget_bytes:
            problems.append(f"total {total:,} B is over the budget {problem.budget_bytes:,} B")
    for con in problem.extra:
        value = con.value(choice)
        scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
        if value > con.rhs + _extra_tolerance(con.rhs, scale):
            problems.append(f"extra constraint {con.name!r} is {value:.10g}, over its limit {con.rhs:.10g}")
    return problems


# --------------------------------------------------------------------------------------------- solution


@dataclass(frozen=True, eq=False)
class Solution:
    """What a solver returns: one format per layer, and what it amounts to.

    ``choice[l]`` is the index into ``problem.formats`` of layer ``l``'s format; ``objective`` is
    ``sum_l cost[l, choice[l]]``; ``total_bytes`` is ``fixed_bytes + sum_l nbytes[l, choice[l]]``.
    ``status`` is ``"optimal"`` when the solver proved no feasible assignment has a lower objective (within
    the solver's numeric tolerance), ``"feasible"`` when it only guarantees the constraints hold.
    ``seconds`` is the wall time of :meth:`BaseSolver.solve`.
    """

    choice: np.ndarray
    objective: float
    total_bytes: int
    status: str
    solver: str
    seconds: float

    STATUSES = ("optimal", "feasible")

    def __post_init__(self) -> None:
        if self.status not in self.STATUSES:
            raise UsageError(f"Solution.status must be one of {self.STATUSES}, got {self.status!r}")
        choice = np.array(self.choice, dtype=np.int64, copy=True)
        if choice.ndim != 1:
            raise UsageError(f"Solution.choice must be 1-D (one format index per layer), got shape {choice.shape}")
        object.__setattr__(self, "choice", _frozen(choice))

    def assignment(self, problem: Problem) -> dict[str, str]:
        """Layer name -> format name, in layer order."""
        if len(problem.layer_names) != len(self.choice):
            raise UsageError(
                f"this solution has {len(self.choice)} layers but the problem has {len(problem.layer_names)}; "
                "pass the problem it was solved for"
            )
        return {name: problem.formats[int(f)] for name, f in zip(problem.layer_names, self.choice)}


# --------------------------------------------------------------------------------------------- solvers


class BaseSolver(abc.ABC):
    """Base class of every solver. The contract below is what callers and the conformance suite rely on.

    Using a solver
    --------------
    ``get_solver(name, **options).solve(problem)`` returns a :class:`Solution` that is guaranteed to

    1. be feasible: each layer takes a format it may take (finite cost), pinned layers take their pin, all
       members of a tie group take one format, ``total_bytes <= budget_bytes`` (exactly, in integers) when a
       budget is set, and every extra constraint holds (up to float round-off, 1e-9 relative);
    2. say in ``status`` whether optimality is proven: ``"optimal"`` means no feasible assignment has a lower
       objective (within the backend's numeric tolerance); ``"feasible"`` means only (1) holds, as for
       heuristics, or for an exact solver that stopped at its time limit with an incumbent;
    3. be deterministic: the same problem and options give the same ``choice``. Among assignments with
       equal objective, which one is returned is the solver's own business, but never random.

    ``solve`` never returns a plan that breaks a constraint. It raises instead:

    * :class:`~mpsearch.errors.InfeasibleError` when no assignment exists. When the budget is below
      :func:`min_feasible_bytes`, the message states that smallest feasible size (in bytes and readable
      units) and ``min_bytes`` carries it. When an extra constraint cannot hold, the message names it; when
      the budget and extra constraints only fail together, an exact solver states the smallest size that
      also meets them (``min_bytes``), or that the extra constraints contradict each other;
    * :class:`NoSolutionFoundError` when a heuristic found no feasible assignment though one may exist
      (only possible with extra constraints);
    * :class:`SolverError` when a backend stops without an answer (e.g. a time limit before any feasible
      assignment) or, a bug, returns an assignment that breaks a constraint.

    Writing a solver
    ----------------
    Subclass, set the class attribute ``name`` (and optionally ``aliases``), take options as keyword-only
    ``__init__`` arguments, implement :meth:`_solve`, and decorate the class with :func:`register_solver`.
    :meth:`solve` is a template method: it checks the arguments, raises the infeasibility errors above that
    need no search, returns at once when each decision's cheapest format already satisfies every constraint
    (that answer is optimal for any solver), and otherwise calls :meth:`_solve`, times it and verifies the
    answer with :func:`check_assignment`. Subclasses do not override :meth:`solve`.
    """

    #: Registry name, e.g. ``"ilp"``; what ``get_solver`` and the CLI's ``--solver`` take.
    name: str = ""
    #: Other names ``get_solver`` accepts for this solver.
    aliases: tuple[str, ...] = ()

    def solve(self, problem: Problem) -> Solution:
        """Solve ``problem``; see the class docstring for what the answer guarantees and what is raised."""
        if not isinstance(problem, Problem):
            raise UsageError(f"{type(self).__name__}.solve expects a Problem, got {type(problem).__name__}")
        start = time.perf_counter()
        self._raise_if_plainly_infeasible(problem)
        dec = problem.decisions
        best = dec.expand(dec.best())
        if not check_assignment(problem, best):
            choice, optimal = best, True
        else:
            choice, optimal = self._solve(problem)
        choice = np.asarray(choice)
        broken = check_assignment(problem, choice)
        if broken:
            raise SolverError(
                f"solver {self.name!r} returned a plan that breaks the constraints ({'; '.join(broken[:5])}); "
                "this is a bug in mpsearch, please report it with the problem that caused it"
            )
        return Solution(
            choice=choice.astype(np.int64),
            objective=problem.objective(choice),
            total_bytes=problem.total_bytes(choice),
            status="optimal" if optimal else "feasible",
            solver=self.name,
            seconds=time.perf_counter() - start,
        )

    @abc.abstractmethod
    def _solve(self, problem: Problem) -> tuple[np.ndarray, bool]:
        """Search for the best assignment of ``problem``; return ``(choice, proven_optimal)``.

        Called by :meth:`solve` only when the budget alone and each extra constraint alone are satisfiable
        and the all-cheapest assignment breaks some constraint. ``choice`` is one format index per layer
        (``problem.decisions.expand`` maps a per-decision choice to it). ``proven_optimal`` is True only when
        the solver proved optimality. Raise :class:`~mpsearch.errors.InfeasibleError` when the constraints
        are proven jointly infeasible (see :meth:`_joint_infeasible_error`), :class:`NoSolutionFoundError`
        when a heuristic gives up, :class:`SolverError` when the backend fails. The returned choice is
        checked against every constraint afterwards.
        """

    # ------------------------------------------------------------------------------ shared helpers
    @staticmethod
    def _raise_if_plainly_infeasible(problem: Problem) -> None:
        reasons: list[str] = []
        min_bytes: int | None = None
        if problem.budget_bytes is not None:
            smallest = min_feasible_bytes(problem)
            if problem.budget_bytes < smallest:
                min_bytes = smallest
                reasons.append(
                    f"budget {problem.budget_bytes:,} B ({format_bytes(problem.budget_bytes)}) is infeasible: the "
                    f"smallest feasible size is {smallest:,} B ({format_bytes(smallest)}) given the eligible "
                    "formats, pins and tie groups; raise --budget to at least that"
                )
        dec = problem.decisions
        for k, con in enumerate(problem.extra):
            lowest = math.fsum(np.where(dec.allowed, dec.extra[k], np.inf).min(axis=1).tolist())
            scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
            if lowest > con.rhs + _extra_tolerance(con.rhs, scale):
                reasons.append(
                    f"extra constraint {con.name!r} cannot hold: its smallest reachable value is {lowest:.6g}, over "
                    f"its limit {con.rhs:.6g}, whatever the budget; relax {con.name!r} to at least {lowest:.6g}"
                )
        if reasons:
            raise InfeasibleError("; also ".join(reasons), min_bytes=min_bytes)

    @staticmethod
    def _joint_infeasible_error(problem: Problem, min_bytes_under_extra: int | None) -> InfeasibleError:
        """The error for a problem whose budget and extra constraints hold one by one but not together.

        ``min_bytes_under_extra`` is the smallest total size of an assignment meeting every extra constraint
        (ignoring the budget), or None when the extra constraints contradict each other.
        """
        names = ", ".join(repr(c.name) for c in problem.extra)
        plural = "s" if len(problem.extra) > 1 else ""
        if min_bytes_under_extra is None:
            return InfeasibleError(
                f"the extra constraints {names} cannot all hold at once (each can on its own), whatever the "
                "budget; relax one of them"
            )
        budget = problem.budget_bytes
        return InfeasibleError(
            f"budget {budget:,} B ({format_bytes(budget or 0)}) is infeasible together with the extra "
            f"constraint{plural} {names}: the smallest size that also meets {'them' if plural else 'it'} is "
            f"{min_bytes_under_extra:,} B ({format_bytes(min_bytes_under_extra)}); raise --budget to at least "
            f"that, or relax {names}",
            min_bytes=min_bytes_under_extra,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_REGISTRY: dict[str, type[BaseSolver]] = {}
_ALIASES: dict[str, str] = {}
_S = TypeVar("_S", bound=type[BaseSolver])


def register_solver(cls: _S) -> _S:
    """Class decorator: make ``cls`` available to :func:`get_solver` under ``cls.name`` and ``cls.aliases``."""
    if not (isinstance(cls, type) and issubclass(cls, BaseSolver)):
        raise UsageError(f"register_solver expects a BaseSolver subclass, got {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise UsageError(f"{cls.__name__}.name must be a non-empty string to register it, got {cls.name!r}")
    for key in (cls.name, *cls.aliases):
        holder = _REGISTRY.get(_ALIASES.get(key, key))
        same = holder is not None and (holder.__module__, holder.__qualname__) == (cls.__module__, cls.__qualname__)
        if holder is not None and not same:
            raise UsageError(f"solver name {key!r} is taken by {holder.__name__}; choose another for {cls.__name__}")
    _REGISTRY[cls.name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def available_solvers() -> tuple[str, ...]:
    """The registered solver names, sorted (aliases not included)."""
    return tuple(sorted(_REGISTRY))


def get_solver(name: str, **options: object) -> BaseSolver:
    """A new solver instance by name or alias, e.g. ``get_solver("ilp", time_limit=60)``."""
    if not isinstance(name, str):
        raise UsageError(f"a solver name must be a string, got {name!r}; valid names: {', '.join(available_solvers())}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    cls: Callable[..., BaseSolver] | None = _REGISTRY.get(key)
    if cls is None:
        aliases = ", ".join(f"{a} = {t}" for a, t in sorted(_ALIASES.items()))
        raise UsageError(
            f"unknown solver {name!r}; valid names: {', '.join(available_solvers())}"
            + (f" (aliases: {aliases})" if aliases else "")
        )
    params = inspect.signature(cls).parameters
    accepted = [p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UsageError(
            f"solver {key!r} does not take option(s) {', '.join(map(repr, unknown))}; it takes: "
            + (", ".join(accepted) if accepted else "no options")
        )
    return cls(**options)
