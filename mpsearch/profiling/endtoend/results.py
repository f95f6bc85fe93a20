"""The end-to-end results of a profile file, read back: :class:`E2EResults`, :func:`load_results`.

A profile file stores every end-to-end run beside the local tier (the tables are the store's:
:mod:`mpsearch.profiling.store.endtoend`). :mod:`~mpsearch.profiling.endtoend.measuring` writes them;
:func:`load_results` reads one run back as raw values and, through :meth:`E2EResults.damages`, as damages
against full precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpsearch.errors import ProfileError
from mpsearch.profiling.endtoend.scores import METRIC_KIND, damage
from mpsearch.profiling.store import read_end_to_end

__all__ = ["E2EResults", "load_results"]


@dataclass
class E2EResults:
    """The stored end-to-end measurements of one run, as damages against full precision."""

    run: str
    config: dict
    units: list[dict]  # {key, layers, format, start, stop, kind, seconds, values: {metric: raw}}
    fp: dict  # full precision's own raw values

    @property
    def metrics(self) -> list[str]:
        return [m for m in METRIC_KIND if m in self.fp]

    def damages(self, unit: dict) -> dict:
        return {m: float(damage(m, unit["values"][m], self.fp[m])) for m in self.metrics if m in unit["values"]}

    def of_kind(self, kind: str) -> list[dict]:
        return [u for u in self.units if u["kind"] == kind]

    @property
    def generations(self) -> int:
        return len(self.units) * len(self.config["seeds"])


def load_results(path, run: str | None = None) -> E2EResults | None:
    """The end-to-end results stored in a profile file (``run``: one setup; default the latest), or None."""
    path = Path(path)
    rows = read_end_to_end(path, run)
    if rows is None:
        return None
    try:
        config = json.loads(rows.config)
        values: dict[str, dict] = {}
        for unit, metric, value in rows.values:
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"metric {metric} of {unit} is {value!r}")
            values.setdefault(unit, {})[metric] = float(value)
        units = [{"key": k, "layers": json.loads(l), "format": f, "start": int(a), "stop": int(b), "kind": kind,
                  "seconds": float(s), "values": values.get(k, {})} for k, l, f, a, b, kind, s in rows.units]
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path} has corrupt end-to-end tables ({e}); delete them or profile again") from None
    fp = next((u["values"] for u in units if u["kind"] == "fp"), None)
    if fp is None:
        return None
    return E2EResults(rows.run, config, [u for u in units if u["kind"] != "fp"], fp)
