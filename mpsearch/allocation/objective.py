"""From a profile to the solver's Problem: per-layer costs, exact bytes, pins and tie groups (array level).

:func:`layer_costs` turns the local tier's measurements into a (layers, formats) cost matrix (errors and
normalisation come from :mod:`mpsearch.metrics`' registry), :func:`parse_pins` reads regex pins, and
:func:`build_problem` assembles the array-level :class:`~mpsearch.allocation.solvers.Problem`. The one path from a
profile and an objective to a Plan, on top of these, is :mod:`mpsearch.allocation.formulation`; this module sits
below it and below :mod:`mpsearch.allocation.decoupled` and :mod:`mpsearch.allocation.compute`, which it feeds.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mpsearch.allocation.solvers import Problem
from mpsearch.errors import UsageError
from mpsearch.metrics import get_metric
from mpsearch.models import resolve_role_pins
from mpsearch.profiling.store import LOCAL_METRICS, Profile

__all__ = ["build_problem", "layer_costs", "parse_pins", "resolve_metric", "step_errors"]


def resolve_metric(profile: Profile, metric: str = "auto") -> str:
    """``"auto"``: ``gn`` (each layer's output error carried to the denoiser's output) where the profile has
    the output-sensitivity measurements, else ``rel_mse``; any other name is checked and returned."""
    if metric == "auto":
        return "gn" if "gn" in profile.metrics else "rel_mse"
    if metric not in LOCAL_METRICS:
        raise UsageError(f"unknown metric {metric!r}; use --metric auto or one of {', '.join(LOCAL_METRICS)}")
    return metric


def step_errors(profile: Profile, metric: str = "auto") -> np.ndarray:
    """(layers, formats, steps) of the metric (see :func:`resolve_metric`) as an error (0 = none, larger = worse;
    the registry's conversion); NaN where a format is ineligible."""
    return profile.errors(resolve_metric(profile, metric))


def layer_costs(profile: Profile, metric: str = "auto", step_weights: Any = None) -> np.ndarray:
    """(layers, formats) sensitivity: the metric's error (:func:`step_errors`) averaged over steps with
    ``step_weights`` (default uniform; one weight per step, or one row of them per layer), normalised as the
    metric's registry entry says (the largest entry is 1). NaN -> ineligible (inf)."""
    metric = resolve_metric(profile, metric)
    err = profile.errors(metric)
    L, _, S = err.shape
    if step_weights is None:
        w = np.full(S, 1.0 / S)
    else:
        w = np.asarray(step_weights, dtype=float)
        rows = np.atleast_2d(w)
        if w.shape not in ((S,), (L, S)) or not np.isfinite(w).all() or (w < 0).any() or (rows.sum(-1) <= 0).any():
            raise UsageError(f"step_weights must be {S} non-negative numbers with a positive sum (one per profiled "
                             f"step, or an ({L}, {S}) array: one row per layer); got shape {w.shape}: "
                             f"{w.tolist() if w.size <= 64 else '...'}; pass {S} weights")
        w = w / w.sum() if w.ndim == 1 else w / w.sum(-1, keepdims=True)
    cost = np.einsum("lfs,s->lf" if w.ndim == 1 else "lfs,ls->lf", np.nan_to_num(err, nan=0.0), w)
    cost = np.where(np.isnan(err).any(-1), np.inf, np.maximum(cost, 0.0))
    cost[:, 0] = 0.0  # fp
    return get_metric(metric).normalize(cost)


def parse_pins(pins: Any) -> dict[str, str]:
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


def _without_duplicate_variants(profile: Profile, cost: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """A calibrated variant that measured exactly as its base format at the same bytes (its search kept the
    round-to-nearest codes) is no other candidate: it is left out (cost inf), so plans name the plain format."""
    formats = list(profile.formats)
    stats = getattr(profile, "stats", None)
    if stats is None or stats.shape[1] != len(formats):
        return cost
    out = cost
    for fi, f in enumerate(formats):
        base, _, variant = f.partition(":")
        if not variant or base not in formats:
            continue
        bi = formats.index(base)
        same = np.isfinite(cost[:, fi]) & (nbytes[:, fi] == nbytes[:, bi]) & \
            np.all(stats[:, fi] == stats[:, bi], axis=(1, 2))
        if same.any():
            out = out.copy() if out is cost else out
            out[same, fi] = np.inf
    return out


def build_problem(profile: Profile, budget_bytes: int | None, *, metric: str = "auto", step_weights: Any = None,
                  pins: Any = None, tie: bool = False, role_pins: dict | None = None,
                  cost: np.ndarray | None = None) -> Problem:
    """The solver Problem for a profile (costs, exact bytes, pins, tie groups).

    ``role_pins`` ({role: format}; None: ``models.DEFAULT_ROLE_PINS``, {}: none) pin layers by role first;
    ``pins`` (regexes) then override them. ``cost`` ((layers, formats), e.g. ``decoupled.e2e_costs``) replaces
    the local metric's costs.
    """

    info = profile.info
    formats = profile.formats
    cost = layer_costs(profile, metric, step_weights) if cost is None else np.asarray(cost, dtype=float)
    nbytes = np.zeros(cost.shape, dtype=np.int64)
    for li, layer in enumerate(info.layers):
        for fi, f in enumerate(formats):
            if f in layer.eligible:
                nbytes[li, fi] = layer.nbytes(f)
    cost = _without_duplicate_variants(profile, cost, nbytes)
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
    groups: tuple[tuple[int, ...], ...] = ()
    if tie:
        index = {n: i for i, n in enumerate(names)}
        groups = tuple(tuple(index[n] for n in g) for g in info.tie_groups)
    return Problem(layer_names=tuple(names), formats=tuple(formats), cost=cost, nbytes=nbytes,
                   fixed_bytes=info.fixed_bytes, budget_bytes=budget_bytes, groups=groups, pins=pinned)
