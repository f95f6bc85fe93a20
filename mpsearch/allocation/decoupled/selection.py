"""Choosing what to measure end to end, cheaply, from the local tier.

:func:`budget_sweep` solves local-tier plans at a few budgets; :func:`shortlist` picks the (layer, format) pairs
whose format flips across that sweep, ranked by local sensitivity x bytes saved; :func:`window_units` turns the
mid-budget plan into one unit per step window (one generation per window, not per layer). The local problems
come from :mod:`mpsearch.allocation.formulation`, below this package in the flow.
"""

from __future__ import annotations

import numpy as np

from mpsearch.allocation.objective import build_problem
from mpsearch.allocation.solvers import get_solver, min_feasible_bytes
from mpsearch.profiling.endtoend.units import Unit, step_windows
from mpsearch.profiling.store import Profile

__all__ = ["budget_sweep", "shortlist", "window_units"]


def _local_problem(profile: Profile, role_pins=None, step_weights=None):
    return build_problem(profile, None, metric="auto", step_weights=step_weights, role_pins=role_pins)


def budget_sweep(profile: Profile, count: int = 5, role_pins: dict | None = None) -> list[tuple[int, np.ndarray]]:
    """Local-tier plans (budget bytes, per-layer format index) at ``count`` budgets spread between the
    smallest feasible size and full precision."""
    from dataclasses import replace


    problem = _local_problem(profile, role_pins)
    lo, hi = min_feasible_bytes(problem), profile.info.fp_bytes
    out = []
    for frac in np.linspace(0, 1, count + 2)[1:-1]:
        b = int(lo + frac * (hi - lo))
        sol = get_solver("cbc").solve(replace(problem, budget_bytes=b))
        out.append((b, np.asarray(sol.choice)))
    return out


def shortlist(profile: Profile, n: int = 8, budgets: int = 5, role_pins: dict | None = None) -> list[tuple[str, str]]:
    """The (layer, format) pairs worth measuring end to end: the layers whose format flips across a sweep of
    ``budgets`` local-tier solves (the decisions the budget actually moves), ranked by local sensitivity x bytes
    saved, topped up from the other unpinned layers by the same score; each with the non-fp formats it takes
    in the sweep (its smallest format when it stays fp throughout)."""
    problem = _local_problem(profile, role_pins)
    formats, info = problem.formats, profile.info
    sweep = budget_sweep(profile, budgets, role_pins)
    chosen = np.stack([c for _, c in sweep], axis=1)  # (L, budgets)
    fp_b = problem.nbytes[:, 0]
    rows = []
    for li in range(len(info.layers)):
        if li in problem.pins:
            continue
        taken = sorted({int(c) for c in chosen[li] if c != 0})
        if not taken:
            ok = [fi for fi in range(1, len(formats)) if np.isfinite(problem.cost[li, fi])]
            if not ok:
                continue
            taken = [min(ok, key=lambda fi: problem.nbytes[li, fi])]
        flips = len(set(chosen[li].tolist())) > 1
        score = max(problem.cost[li, fi] * (fp_b[li] - problem.nbytes[li, fi]) for fi in taken)
        rows.append((not flips, -score, li, taken))
    rows.sort()
    return [(info.layers[li].name, formats[fi]) for _, _, li, taken in rows[:n] for fi in taken]


def window_units(profile: Profile, windows: int = 4, role_pins: dict | None = None) -> list[Unit]:
    """One unit per step window: the mid-budget local plan's quantized layers, each in its format, quantized
    only inside the window (grouped by format, since a unit has one format: one unit per window and format)."""
    sweep = budget_sweep(profile, 3, role_pins)
    _, choice = sweep[len(sweep) // 2]
    formats, names = profile.formats, profile.info.names
    by_fmt: dict[str, list[str]] = {}
    for li, fi in enumerate(choice):
        if fi:
            by_fmt.setdefault(formats[fi], []).append(names[li])
    return [Unit(tuple(ls), f, w, "mid-plan", "window")
            for w in step_windows(profile.steps, windows) for f, ls in sorted(by_fmt.items())]
