"""The decoupled objective: end-to-end measurements -> (layers, formats) costs the solver minimizes.

Per metric a damage (>= 0), normalized by its largest value; content and quality metrics averaged within their
kind and combined with the user's weights (:func:`parse_weights`). Layers not measured get an estimate from the
local tier, calibrated on the measured ones (a least-squares line between log local cost and log damage, per
metric: :func:`calibrate`); window units set timestep weights (:func:`window_step_weights`) and per-window
activation overrides (:func:`activation_overrides`). :func:`e2e_costs` is what ``mpsearch solve --weights`` uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpsearch.allocation.objective import layer_costs, resolve_metric
from mpsearch.errors import ProfileError, UsageError
from mpsearch.formats import get_format
from mpsearch.metrics import get_metric
from mpsearch.profiling.endtoend.results import E2EResults, load_results
from mpsearch.profiling.endtoend.scores import METRIC_KIND, OBJECTIVE_METRICS
from mpsearch.profiling.store import Profile

__all__ = ["activation_overrides", "calibrate", "e2e_costs", "parse_weights", "window_step_weights"]


def calibrate(local: np.ndarray, measured: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Map local cost -> end-to-end damage, fitted on the measured pairs: least squares of log damage on log
    local cost (a power law, monotone when the slope is positive); with fewer than 3 usable points or a
    non-positive slope, the median ratio damage / local cost. Damages at or below 0 count as the smallest
    positive measured damage (or 1e-12)."""
    local = np.asarray(local, float)
    measured = np.asarray(measured, float)
    pos = measured[measured > 0]
    floor = pos.min() if pos.size else 1e-12
    y = np.maximum(measured, floor)
    ok = local > 0
    if ok.sum() >= 3 and np.ptp(np.log(local[ok])) > 0:
        b, a = np.polyfit(np.log(local[ok]), np.log(y[ok]), 1)
        if b > 0:
            return lambda c: np.where(np.asarray(c) > 0, np.exp(a + b * np.log(np.maximum(c, 1e-300))), 0.0)
    ratio = float(np.median(y[ok] / local[ok])) if ok.any() else 0.0
    return lambda c: np.asarray(c) * ratio


def parse_weights(spec: Any) -> dict[str, float]:
    """'content=1,quality=1' (or a dict) -> {"content": 1.0, "quality": 1.0}; other names are metrics
    (e.g. 'ssim=1,frechet=2') and weigh that metric alone."""
    if spec is None:
        return {"content": 1.0, "quality": 1.0}
    items = spec.items() if isinstance(spec, dict) else (p.split("=", 1) for p in str(spec).split(",") if p.strip())
    out = {}
    for item in items:
        if len(item) != 2:
            raise UsageError(f"weights {spec!r} must look like content=1,quality=1")
        k, v = item
        k = str(k).strip()
        if k not in ("content", "quality") and k not in METRIC_KIND:
            raise UsageError(f"weights name {k!r}; expected content, quality or a metric "
                             f"({', '.join(METRIC_KIND)}), e.g. content=1,quality=1")
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise UsageError(f"weight {k}={v!r} is not a number; write e.g. {k}=1") from None
        if not np.isfinite(v) or v < 0:
            raise UsageError(f"weight {k}={v} must be a finite number >= 0")
        out[k] = v
    if not out or sum(out.values()) <= 0:
        raise UsageError(f"weights {spec!r} must have a positive sum, e.g. content=1,quality=1")
    return out


def window_step_weights(profile: Profile, res: E2EResults, weights: dict) -> np.ndarray | None:
    """Timestep weights from the window units: step s in window w gets (the window's combined end-to-end
    damage) / (the same plan's local error summed over the window), so the local tier's per-step errors,
    weighted, add up per window like the measured damage. None without window units."""
    wins = res.of_kind("window")
    if not wins:
        return None
    combined = combine({u["key"]: res.damages(u) for u in wins}, weights)
    err = np.nan_to_num(profile.metric(resolve_metric(profile)))
    index = {n: i for i, n in enumerate(profile.info.names)}
    per_window: dict[tuple[int, int], list[float]] = {}
    for u in wins:
        li = [index[n] for n in u["layers"] if n in index]
        fi = profile.formats.index(u["format"])
        local = float(err[li, fi, u["start"]:u["stop"]].sum())
        d = per_window.setdefault((u["start"], u["stop"]), [0.0, 0.0])
        d[0] += combined[u["key"]]
        d[1] += local
    top = max(d for d, _ in per_window.values())
    w = np.zeros(profile.steps)
    for (a, b), (damage, local) in per_window.items():
        w[a:b] = max(damage, 1e-3 * top) / max(local, 1e-30)
    if not np.isfinite(w).all() or w.sum() <= 0:
        return None
    return w / w.sum()


def combine(damages: dict[str, dict], weights: dict) -> dict[str, float]:
    """Combine per-metric damages of several entries: each metric normalized by its largest value over the
    entries, averaged within its kind, kinds (or single metrics) weighted by ``weights``."""
    metrics = sorted({m for d in damages.values() for m in d})
    top = {m: max((max(d.get(m, 0.0), 0.0) for d in damages.values()), default=0.0) for m in metrics}
    out = {}
    for k, d in damages.items():
        total = 0.0
        for name, w in weights.items():
            group = OBJECTIVE_METRICS.get(name, (name,))
            vals = [max(d[m], 0.0) / top[m] for m in group if m in d and top[m] > 0]
            total += w * (float(np.mean(vals)) if vals else 0.0)
        out[k] = total
    return out


def e2e_costs(profile: Profile, weights: Any = None, *, res: E2EResults | None = None, step_weights: Any = None,
              max_damage: float | None = None, keep: Any = None) -> tuple[np.ndarray, dict]:
    """(layers, formats) costs of the decoupled objective, and a report of how they were made.

    Per metric: measured single-layer damages where measured, else the calibrated local estimate
    (:func:`calibrate`, on local costs aggregated with ``step_weights`` or, by default, the weights the window
    units give); each metric normalized by its largest value; content and quality metrics averaged within their
    kind and weighted by ``weights`` ('content=1,quality=1'). ``max_damage`` (minimax): a (layer, format) whose
    combined damage, as a fraction of the largest, exceeds it is ruled out (fp, and the pairs in ``keep``
    ({layer: format}, e.g. role pins), always stay allowed).
    """
    weights = parse_weights(weights)
    if res is None:
        res = load_results(profile.path) if profile.path is not None else None
    if res is None or not res.of_kind("layer"):
        raise ProfileError(f"profile {profile.path} has no end-to-end measurements of single layers; run "
                           "`mpsearch profile --end-to-end` first (or solve without --objective-weights)")
    if step_weights is None:
        step_weights = window_step_weights(profile, res, weights)
    local = layer_costs(profile, "auto", step_weights)
    L, F = local.shape
    index = {n: i for i, n in enumerate(profile.info.names)}
    measured = {}
    for u in res.of_kind("layer"):
        if u["start"] == 0 and u["stop"] == profile.steps and u["layers"][0] in index:
            measured[(index[u["layers"][0]], profile.formats.index(u["format"]))] = res.damages(u)
    used = sorted({m for name in weights for m in OBJECTIVE_METRICS.get(name, (name,))} & set(res.metrics))
    if not used:
        raise ProfileError(f"the end-to-end run stores none of the metrics the weights use ({', '.join(weights)}); "
                           f"it has {', '.join(res.metrics)}: weigh those, or measure with a scorer/features")
    per_metric = {}
    fits = {}
    finite = np.isfinite(local)
    for m in used:
        keys = [k for k in measured if m in measured[k]]
        fit = calibrate(np.array([local[k] for k in keys]), np.array([measured[k][m] for k in keys]))
        est = np.where(finite, fit(np.where(finite, local, 0.0)), np.inf)
        for k in keys:
            est[k] = max(measured[k][m], 0.0)
        est[:, 0] = 0.0
        per_metric[m] = get_metric(m).normalize(est)
        fits[m] = len(keys)
    cost = np.zeros((L, F))
    for name, w in weights.items():
        group = [m for m in OBJECTIVE_METRICS.get(name, (name,)) if m in per_metric]
        if group and w > 0:
            cost = cost + w * np.mean([np.where(finite, per_metric[m], 0.0) for m in group], axis=0)
    cost = np.where(finite, cost, np.inf)
    ruled_out = 0
    if max_damage is not None:
        if not 0 < float(max_damage) <= 1:
            raise UsageError(f"max_damage must be in (0, 1] (a fraction of the largest damage), got {max_damage}")
        top = cost[np.isfinite(cost)].max()
        over = np.isfinite(cost) & (cost > float(max_damage) * top)
        over[:, 0] = False
        for name, f in (keep or {}).items():
            over[index[name], profile.formats.index(f)] = False
        ruled_out = int(over.sum())
        cost = np.where(over, np.inf, cost)
    report = {"run": res.run, "weights": weights, "metrics": used, "measured_pairs": len(measured),
              "estimated_pairs": int(np.isfinite(local[:, 1:]).sum()) - len(measured),
              "calibration": f"log-log least squares of damage on the local {resolve_metric(profile)}, per metric "
                             "(median ratio fallback)",
              "step_weights": None if step_weights is None else [round(float(x), 6) for x in step_weights],
              "max_damage": max_damage, "ruled_out": ruled_out}
    return cost, report


def activation_overrides(profile: Profile, assignment: dict, windows: int, res: E2EResults | None = None,
                         weights: Any = None) -> list[dict]:
    """Per-window activation overrides: in the ``windows`` step windows with the largest measured damage
    (only those above the average window's), the plan's layers whose format quantizes activations keep them
    in fp; weights stay one packed copy per layer."""
    if not windows:
        return []
    res = res if res is not None else load_results(profile.path)
    if res is None or not res.of_kind("window"):
        raise ProfileError("per-window activation overrides need window measurements; run `mpsearch profile "
                           "--end-to-end` with --windows > 0")
    combined = combine({u["key"]: res.damages(u) for u in res.of_kind("window")}, parse_weights(weights))
    per: dict[tuple[int, int], float] = {}
    for u in res.of_kind("window"):
        per[(u["start"], u["stop"])] = per.get((u["start"], u["stop"]), 0.0) + combined[u["key"]]
    mean = float(np.mean(list(per.values())))
    worst = [w for w, d in sorted(per.items(), key=lambda kv: -kv[1]) if d > mean][:int(windows)]
    acts = {n: "fp" for n, f in assignment.items() if f != "fp" and get_format(f).quantizes_activations}
    if not acts:
        return []
    return [{"steps": [a, b], "activations": dict(acts)} for a, b in sorted(worst)]
