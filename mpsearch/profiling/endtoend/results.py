"""The end-to-end tables of a profile file and reading them back: :data:`_TABLES`, :class:`E2EResults`,
:func:`load_results`.

A profile file stores every end-to-end run beside the local tier::

  e2e_runs(run, config)                        one row per measuring setup (seeds, steps, scorer, features)
  e2e_units(run, unit, layers, format, start, stop, kind, seconds)
  e2e(run, unit, metric, value)                raw metric values; the "fp" unit holds full precision's own

:mod:`~mpsearch.profiling.endtoend.measuring` writes them; :func:`load_results` reads one run back as raw values and, through
:meth:`E2EResults.damages`, as damages against full precision. Old profiles have none of these tables.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpsearch.errors import ProfileError
from mpsearch.profiling.store import _connect
from mpsearch.profiling.endtoend.scores import METRIC_KIND, damage

__all__ = ["E2EResults", "load_results"]

_TABLES = """
CREATE TABLE IF NOT EXISTS e2e_runs (run TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS e2e_units (run TEXT, unit TEXT, layers TEXT, format TEXT, start INTEGER, stop INTEGER,
    kind TEXT, seconds REAL, PRIMARY KEY (run, unit));
CREATE TABLE IF NOT EXISTS e2e (run TEXT, unit TEXT, metric TEXT, value REAL, PRIMARY KEY (run, unit, metric));
"""


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
    with contextlib.closing(_connect(path, readonly=True)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "e2e_runs" not in tables:
            return None
        runs = conn.execute("SELECT run, config FROM e2e_runs ORDER BY rowid").fetchall()
        if run is not None:
            runs = [r for r in runs if r[0] == run]
            if not runs:
                raise ProfileError(f"{path} has no end-to-end run {run!r}; leave the run out to use the latest")
        if not runs:
            return None
        run, config = runs[-1]
        try:
            config = json.loads(config)
            rows = conn.execute("SELECT unit, layers, format, start, stop, kind, seconds FROM e2e_units WHERE run = ? "
                                "ORDER BY rowid", (run,)).fetchall()
            values: dict[str, dict] = {}
            for unit, metric, value in conn.execute("SELECT unit, metric, value FROM e2e WHERE run = ?", (run,)):
                if not isinstance(value, (int, float)) or not np.isfinite(value):
                    raise ValueError(f"metric {metric} of {unit} is {value!r}")
                values.setdefault(unit, {})[metric] = float(value)
            units = [{"key": k, "layers": json.loads(l), "format": f, "start": int(a), "stop": int(b), "kind": kind,
                      "seconds": float(s), "values": values.get(k, {})} for k, l, f, a, b, kind, s in rows]
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ProfileError(f"{path} has corrupt end-to-end tables ({e}); delete them or profile again") from None
    fp = next((u["values"] for u in units if u["kind"] == "fp"), None)
    if fp is None:
        return None
    return E2EResults(run, config, [u for u in units if u["kind"] != "fp"], fp)
