"""The array-level allocation problem: :class:`Problem`, its extra :class:`Constraint` rows and the
:class:`Decisions` view solvers work on.

This module knows nothing of models or profiles. A higher layer turns a profile and a budget into a
:class:`Problem` (one row per quantizable layer, one column per number format); a solver turns the
problem into a :class:`~mpsearch.allocation.solvers.solution.Solution` (one format per layer). The problem, in words::

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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from mpsearch.errors import UsageError

__all__ = ["Constraint", "Decisions", "Problem"]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array



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
        object.__setattr__(self, "coef", frozen(coef))
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
        """The number of decisions (tie groups and untied layers)."""
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
        for row in np.flatnonzero(~allowed.any(axis=1)) if n_formats else ():
            raise UsageError(
                f"Problem.cost row {int(row)} (layer {names[row]!r}) is inf for every format; "
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
                raise UsageError(f"Problem.extra[{k}] ({con.name!r}) has coef shape {con.coef.shape}, "
                                 f"expected {expected}")
            if con.name in seen:
                raise UsageError(f"Problem.extra has two constraints named {con.name!r}; names must be unique")
            seen.add(con.name)

        set_ = object.__setattr__
        set_(self, "layer_names", names)
        set_(self, "formats", formats)
        set_(self, "cost", frozen(cost))
        set_(self, "nbytes", frozen(nbytes))
        set_(self, "fixed_bytes", int(self.fixed_bytes))
        set_(self, "budget_bytes", None if self.budget_bytes is None else int(self.budget_bytes))
        set_(self, "groups", groups)
        set_(self, "pins", MappingProxyType(pins))
        set_(self, "extra", extra)
        set_(self, "_decisions", self._collapse())

    @staticmethod
    def _names(field_name: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            raise UsageError(f"Problem.{field_name} must be a sequence of names, got the string {value!r}")
        try:
            names = tuple(value)
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
    def _groups(value: Any, n_layers: int) -> tuple[tuple[int, ...], ...]:
        try:
            groups = tuple(tuple(g) for g in value)
        except TypeError:
            raise UsageError(f"Problem.groups must be a sequence of sequences of layer indices, "
                             f"got {value!r}") from None
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
        members = tuple(frozen(np.array(m, dtype=np.int64)) for m in members_raw)
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
            layer_decision=frozen(layer_decision),
            allowed=frozen(dec_allowed),
            cost=frozen(cost),
            nbytes=frozen(nbytes),
            extra=frozen(extra),
        )

    # ---------------------------------------------------------------------------------------- views
    @property
    def n_layers(self) -> int:
        """The number of layers (rows of ``cost``)."""
        return len(self.layer_names)

    @property
    def n_formats(self) -> int:
        """The number of formats (columns of ``cost``)."""
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

    def assignment(self, choice: Any) -> dict[str, str]:
        """Layer name -> format name of a per-layer ``choice`` (indices into ``formats``), in layer order."""
        choice = np.asarray(choice)
        if choice.shape != (self.n_layers,):
            raise UsageError(f"a choice needs one format index per layer ({self.n_layers}), got shape "
                             f"{choice.shape}; pass the problem it was solved for")
        return {name: self.formats[int(f)] for name, f in zip(self.layer_names, choice, strict=True)}

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
