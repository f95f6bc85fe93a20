"""The cheap end-to-end tier in one call, and how well the local tier ranks layers like it.

:func:`run_end_to_end` measures the shortlist per layer and one unit per step window
(:mod:`~mpsearch.allocation.decoupled.selection`, :mod:`~mpsearch.profiling.endtoend.measuring`) and returns the summary
``mpsearch profile --end-to-end --json`` prints; :func:`spearman` is the rank agreement, per metric, between the
local tier's sensitivity and the measured end-to-end damage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpsearch.allocation.decoupled.selection import shortlist, window_units
from mpsearch.allocation.objective import layer_costs
from mpsearch.errors import ProfileError, UsageError
from mpsearch.profiling.endtoend.measuring import measure
from mpsearch.profiling.endtoend.results import E2EResults, load_results
from mpsearch.profiling.endtoend.units import exhaustive_units, layer_units, step_windows
from mpsearch.profiling.store import Profile

__all__ = ["run_end_to_end", "spearman"]


def spearman(profile: Profile, res: E2EResults) -> dict:
    """Rank agreement (scipy.stats.spearmanr) between the local tier's sensitivity (the default local metric,
    ``gn`` where measured, over steps) and the end-to-end damage of the measured single-layer units, per metric:
    {metric: {rho, p, n}}."""
    from scipy.stats import spearmanr

    local = layer_costs(profile, "auto")
    index = {n: i for i, n in enumerate(profile.info.names)}
    pairs = [(u, local[index[u["layers"][0]], profile.formats.index(u["format"])])
             for u in res.of_kind("layer") if u["start"] == 0 and u["stop"] == profile.steps]
    out: dict[str, dict[str, float | int | None]] = {}
    for m in res.metrics:
        x = [c for u, c in pairs if m in u["values"]]
        y = [res.damages(u)[m] for u, _ in pairs if m in u["values"]]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            out[m] = {"rho": None, "p": None, "n": len(x)}
            continue
        r = spearmanr(x, y)
        out[m] = {"rho": round(float(r.statistic), 4), "p": float(r.pvalue), "n": len(x)}
    return out


def run_end_to_end(pipe: Any, profile: Profile, *, shortlist_n: int = 8, windows: int = 4,
                   content_scorer: Callable | None = None, features: Callable | None = None,
                   seeds: Sequence[int] | None = None, role_pins: dict | None = None, progress: bool = False) -> dict:
    """The cheap end-to-end tier: the shortlist per layer, plus one unit per step window; stored in the
    profile. Returns the summary ``mpsearch profile --end-to-end --json`` prints (``cost_ratio``: generations
    made for it / generations of the exhaustive per-layer, per-format run; ``spearman`` per metric)."""
    if isinstance(shortlist_n, bool) or not isinstance(shortlist_n, int) or shortlist_n < 1:
        raise UsageError(f"shortlist must be a positive number of layers, got {shortlist_n!r}; pass e.g. --shortlist 8")
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 0:
        raise UsageError(f"windows must be a number of step windows >= 0, got {windows!r}; pass e.g. --windows 4")
    pairs = shortlist(profile, shortlist_n, role_pins=role_pins)
    units = layer_units(profile.info, pairs) + (window_units(profile, windows, role_pins) if windows else [])
    done = measure(pipe, profile, units, content_scorer=content_scorer, features=features, seeds=seeds,
                   progress=progress)
    res = load_results(profile.path, done["run"])
    if res is None:  # measure() always stores the full-precision unit; a missing one means the file changed under us
        raise ProfileError(f"{profile.path} has no end-to-end results for run {done['run']!r} after measuring it; "
                           "profile --end-to-end again")
    exhaustive = 1 + len(exhaustive_units(profile.info, profile.formats))
    return {"run": done["run"], "units": 1 + len(units), "shortlist": [list(p) for p in pairs],
            "windows": [list(w) for w in step_windows(profile.steps, windows)] if windows else [],
            "exhaustive_units": exhaustive, "cost_ratio": round((1 + len(units)) / exhaustive, 4),
            "measured_now": done["measured"], "seconds": round(done["seconds"], 2), "spearman": spearman(profile, res),
            "metrics": res.metrics}
