"""Merging the shard files of one profile into one file: :func:`merge_profiles`."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

from mpsearch.errors import ProfileError, UsageError
from mpsearch.io import apply_umask
from mpsearch.profiling.latency import LatencyTable
from mpsearch.profiling.store.files import remove_profile_file, writer_lock
from mpsearch.profiling.store.latency import LATENCY_KEY, read_latency, store_latency
from mpsearch.profiling.store.reader import Profile
from mpsearch.profiling.store.schema import create_tables, info_from_dict, open_current, read_meta

__all__ = ["merge_profiles"]

# the columns of the per-unit tables, less ``unit``
_UNIT_TABLES = {"local": "layer, format, step, err2, ref2, out2, dot", "block_change": "block, step, diff2, ref2",
                "sensitivity": "layer, step, g2, n"}


def merge_profiles(inputs, out) -> Profile:
    """Merge the shard files of one profile (``mpsearch profile --shard i/n``) into ``out``, atomically.

    The shards must share the model, its weights, the configuration and the versions that measured them;
    otherwise nothing is written and the error names what differs. Where each shard loaded the model from
    (its ``model_source``, a path on its own machine) need not agree: the merged file keeps the first input's.
    Every finished unit of every shard is copied (a unit found in two shards must hold identical measurements),
    so the merged file equals, in
    content, the file one process would have written (only the per-unit wall times in ``units`` differ).
    The merge is written beside ``out`` and renamed into place (mode 0o666 less the umask) while holding
    ``out``'s writer lock, so it never replaces a file another process is writing.

    A latency table (``mpsearch profile --latency``) belongs to the machine that measured it, not to a shard's
    units, so it is carried whole, never mixed: the most recently measured one among the inputs that have one
    (``Profile.latency()`` of the result says its device and time).
    """
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if not paths:
        raise UsageError("merge needs at least one profile file; pass the shard files to merge")
    for p in paths:
        if not p.is_file():
            raise ProfileError(f"profile {p} does not exist; check the shard paths")
        if out.exists() and out.resolve() == p.resolve():
            raise UsageError(f"--out {out} is also an input; write the merge to a new file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProfileError(f"cannot write {out}: {e.strerror or e}; choose a writable --out") from None
    temps: list[Path] = []
    try:
        with writer_lock(out):
            sources, first, latest = _checked_sources(paths, out.parent, temps)
            merged = _write(sources, paths, out, first, latest, temps)
    finally:
        for t in temps:
            remove_profile_file(t)
    merged.path = out
    return merged


def _temp(folder: Path, name: str, temps: list[Path]) -> Path:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as e:
        raise ProfileError(f"cannot write in {folder}: {e.strerror or e}; choose a writable --out") from None
    temps.append(Path(tmp))
    return Path(tmp)


def _checked_sources(paths: list[Path], folder: Path, temps: list[Path]):
    """Check every input before anything is written: (files to attach, (first path, its meta), the most recently
    measured latency table). An input of an older schema is attached as a migrated copy."""
    first: tuple[Path, dict] | None = None
    latest: LatencyTable | None = None
    sources = []
    for p in paths:
        try:
            with contextlib.closing(open_current(p, readonly=True)) as conn:
                meta, info = read_meta(conn, p)[:2]
                table = read_latency(conn, p, info)
                if conn.execute("PRAGMA database_list").fetchone()[2] == "":  # migrated in memory: attach a copy
                    copy = _temp(folder, p.name, temps)
                    with contextlib.closing(sqlite3.connect(copy)) as dst:
                        conn.backup(dst)
                    sources.append(copy)
                else:
                    sources.append(p)
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{p} is not a readable mpsearch profile ({e}); profile that shard again") from None
        if table is not None and (latest is None or str(table.meta.get("measured_at", "")) >
                                  str(latest.meta.get("measured_at", ""))):
            latest = table
        if first is None:
            first = (p, meta)
            continue
        _check_same(first, p, meta)
    assert first is not None
    return sources, first, latest


def _check_same(first: tuple[Path, dict], p: Path, meta: dict) -> None:
    for key, what in (("schema", "profile schema"), ("model", "model"), ("weights", "model weights"),
                      ("config", "configuration"), ("versions", "versions")):
        if meta.get(key) != first[1].get(key):
            detail = ""
            if key == "config":
                a, b = first[1].get("config", {}), meta.get("config", {})
                detail = f" (differs in: {', '.join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))})"
            elif key == "versions":
                a, b = first[1].get("versions", {}), meta.get("versions", {})
                detail = " (" + ", ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b))
                                          if a.get(k) != b.get(k)) + ")"
            raise ProfileError(f"cannot merge {first[0]} and {p}: they were made with another {what}{detail}; "
                               "merge only shards of one `mpsearch profile` configuration and model")


def _write(sources: list[Path], paths: list[Path], out: Path, first, latest, temps: list[Path]) -> Profile:
    tmp = _temp(out.parent, out.name, temps)
    try:
        with contextlib.closing(sqlite3.connect(tmp)) as conn:
            with conn:
                create_tables(conn)
            for n, (src, p) in enumerate(zip(sources, paths, strict=True)):
                conn.execute("ATTACH DATABASE ? AS src", (src.resolve().as_uri() + "?mode=ro",))
                try:
                    _merge_one(conn, p, copy_meta=(n == 0))
                finally:
                    conn.execute("DETACH DATABASE src")
            with conn:  # the first input's meta came with its latency key: the chosen table replaces it
                conn.execute("DELETE FROM meta WHERE key = ?", (LATENCY_KEY,))
            if latest is not None:
                store_latency(conn, latest, info_from_dict(first[1]["model"]), out)
        merged = Profile.load(tmp)
        apply_umask(tmp)
        os.replace(tmp, out)
    except sqlite3.DatabaseError as e:
        raise ProfileError(f"cannot merge into {out} ({e}); check the shard files and the --out folder") from None
    except OSError as e:
        raise ProfileError(f"cannot write {out}: {e.strerror or e}; choose a writable --out") from None
    return merged


def _merge_one(conn, path, copy_meta: bool) -> None:
    """Copy the attached shard ``src``'s finished units into main; a unit already there must match exactly."""
    for (unit,) in conn.execute("SELECT unit FROM src.units WHERE unit IN (SELECT unit FROM main.units)").fetchall():
        for table, cols in _UNIT_TABLES.items():
            a = f"SELECT {cols} FROM main.{table} WHERE unit = ?"
            b = f"SELECT {cols} FROM src.{table} WHERE unit = ?"
            differs = conn.execute(f"SELECT 1 FROM ({a} EXCEPT {b}) UNION ALL SELECT 1 FROM ({b} EXCEPT {a}) LIMIT 1",
                                   (unit, unit, unit, unit)).fetchone()
            if differs:
                raise ProfileError(f"unit {unit} is in two of the files with different measurements ({path} and an "
                                   "earlier one); merge shards of one run, or delete one and profile it again")
    with conn:  # one transaction: the shard's units are read as of one moment, even while it is being written
        conn.execute("BEGIN")
        if copy_meta:
            conn.execute("INSERT INTO main.meta SELECT key, value FROM src.meta")
        new = "unit IN (SELECT unit FROM src.units) AND unit NOT IN (SELECT unit FROM main.units)"
        for table, cols in _UNIT_TABLES.items():
            conn.execute(f"INSERT INTO main.{table} (unit, {cols}) SELECT unit, {cols} FROM src.{table} WHERE {new}")
        conn.execute("INSERT INTO main.units (unit, seconds) SELECT unit, seconds FROM src.units "
                     "WHERE unit NOT IN (SELECT unit FROM main.units)")
        conn.execute("INSERT OR IGNORE INTO main.shards SELECT i, n FROM src.shards")
        conn.execute("INSERT OR IGNORE INTO main.calibration "
                     "SELECT layer, key, dtype, shape, data FROM src.calibration")
