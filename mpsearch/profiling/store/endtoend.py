"""The end-to-end tables of a profile file (the table access of :mod:`mpsearch.profiling.endtoend`)::

  e2e_runs(run, config)                        one row per measuring setup (seeds, steps, scorer, features)
  e2e_units(run, unit, layers, format, start, stop, kind, seconds)
  e2e(run, unit, metric, value)                raw metric values; the "fp" unit holds full precision's own

:class:`EndToEndWriter` writes one unit per transaction (holding the file's writer lock);
:func:`read_end_to_end` reads one run's rows back, raw (``endtoend.results`` turns them into damages).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mpsearch.errors import ProfileError
from mpsearch.profiling.store.files import writer_lock
from mpsearch.profiling.store.schema import open_current

__all__ = ["EndToEndWriter", "EndToEndRows", "read_end_to_end"]


class EndToEndWriter:
    """Adds end-to-end measurements to an existing profile file, one unit per transaction (resumable). Holds the
    file's writer lock until :meth:`close` (a context manager)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ProfileError(f"profile {self.path} does not exist; run `mpsearch profile` first")
        self._lock = writer_lock(self.path)
        try:
            self.conn = open_current(self.path)
        except BaseException as e:
            self._lock.release()
            if isinstance(e, sqlite3.DatabaseError):
                raise ProfileError(f"cannot store end-to-end results in {self.path} ({e}); check the file") from None
            raise

    def begin_run(self, run: str, config: dict) -> set[str]:
        """Record the run ``run`` (its measuring ``config``) if new; the keys of its units already stored."""
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO e2e_runs VALUES (?, ?)", (run, json.dumps(config, sort_keys=True)))
        return {u for (u,) in self.conn.execute("SELECT unit FROM e2e_units WHERE run = ?", (run,))}

    def write_unit(self, run: str, key: str, layers, fmt: str, start: int, stop: int, kind: str, seconds: float,
                   scores: dict) -> None:
        """Store one unit of ``run`` and its raw ``scores`` ({metric: value}) in one transaction."""
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO e2e_units VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (run, key, json.dumps(list(layers)), fmt, start, stop, kind, seconds))
            self.conn.executemany("INSERT OR REPLACE INTO e2e VALUES (?, ?, ?, ?)",
                                  [(run, key, m, float(v)) for m, v in scores.items()])

    def close(self) -> None:
        """Close the file and give the lock up."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            self._lock.release()

    def __enter__(self) -> EndToEndWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class EndToEndRows:
    """One end-to-end run's rows as stored: ``config`` (JSON text), ``units`` (unit, layers JSON, format, start,
    stop, kind, seconds) in the order written, ``values`` (unit, metric, value)."""

    run: str
    config: str
    units: list[tuple]
    values: list[tuple]


def read_end_to_end(path, run: str | None = None) -> EndToEndRows | None:
    """The rows of the end-to-end run ``run`` (default: the latest) in the profile file ``path``; None if it has
    no run (a ProfileError if ``run`` is named and absent)."""
    path = Path(path)
    try:
        with contextlib.closing(open_current(path, readonly=True)) as conn:
            runs = conn.execute("SELECT run, config FROM e2e_runs ORDER BY rowid").fetchall()
            if run is not None:
                runs = [r for r in runs if r[0] == run]
                if not runs:
                    raise ProfileError(f"{path} has no end-to-end run {run!r}; leave the run out to use the latest")
            if not runs:
                return None
            run, config = runs[-1]
            units = conn.execute("SELECT unit, layers, format, start, stop, kind, seconds FROM e2e_units "
                                 "WHERE run = ? ORDER BY rowid", (run,)).fetchall()
            values = conn.execute("SELECT unit, metric, value FROM e2e WHERE run = ?", (run,)).fetchall()
    except sqlite3.DatabaseError as e:
        raise ProfileError(f"{path} is not a readable mpsearch profile ({e}); profile again") from None
    return EndToEndRows(run, config, units, values)
