"""The profile file's latency table (``mpsearch profile --latency``).

``latency(layer, format, act, seconds)``: seconds per denoiser call of each layer in each format, measured on
one machine; ``act`` says what the activations were: 'quant' (quantized, as a W8A8/W4A4 format runs) or 'fp'
(full precision: fp, weight-only formats, and the weight-only variant of W8A8/W4A4). Its device, torch version,
threads and time are the meta key 'latency'. Written in one transaction, replaced whole. It is the machine's,
not the model's: the profile's digest does not cover it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import numpy as np

from mpsearch.errors import FormatError, ProfileError, UsageError
from mpsearch.formats import get_format
from mpsearch.models import ModelInfo
from mpsearch.profiling.latency import LatencyTable
from mpsearch.profiling.store.files import writer_lock
from mpsearch.profiling.store.schema import open_current, read_meta

__all__ = ["LATENCY_KEY", "store_latency", "write_latency", "read_latency"]

LATENCY_KEY = "latency"  # meta key: device, torch, threads, measured_at, formats, and how it was measured


def _latency_rows(table, info: ModelInfo, path) -> list[tuple]:
    """The rows of ``table`` for the ``latency`` table, checked against the profile's layers."""

    if tuple(table.names) != tuple(info.names):
        raise ProfileError(f"the latency table was measured on another model than {path} was profiled on (other "
                           "layers); measure it on the profiled model with `mpsearch profile --latency`")
    rows = []
    for fi, f in enumerate(table.formats):
        try:
            quantizes = get_format(f).quantizes_activations
        except FormatError as e:
            raise ProfileError(f"the latency table has a format this mpsearch does not know ({e})") from None
        for li, layer in enumerate(info.layers):
            sec, wo = table.seconds[li, fi], table.seconds_weight_only[li, fi]
            if f in layer.eligible and not np.isfinite(sec):
                raise ProfileError(f"the latency table lacks layer {layer.name} in {f}; measure it again")
            if np.isfinite(wo) and not quantizes:
                raise ProfileError(f"the latency table has a weight-only time for {f}, which keeps activations in "
                                   "full precision anyway; measure it again")
            if np.isfinite(sec):
                rows.append((li, f, "quant" if quantizes else "fp", float(sec)))
            if np.isfinite(wo):
                rows.append((li, f, "fp", float(wo)))
    return rows


def store_latency(conn: sqlite3.Connection, table: LatencyTable, info: ModelInfo, path) -> None:
    """Replace the open file's latency table with ``table``, in one transaction (all of it, or nothing)."""
    rows = _latency_rows(table, info, path)
    meta = {**table.meta, "device": table.device, "formats": list(table.formats)}
    with conn:
        conn.execute("DELETE FROM latency")
        conn.executemany("INSERT INTO latency VALUES (?, ?, ?, ?)", rows)
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (LATENCY_KEY, json.dumps(meta, sort_keys=True)))


def write_latency(path, table: LatencyTable) -> None:
    """Store ``table`` (a ``latency.LatencyTable`` of the profiled model) in the profile file ``path``, replacing
    any table there, atomically. The profile's digest does not change."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile {path} does not exist; run `mpsearch profile` first")
    with writer_lock(path):
        try:
            with contextlib.closing(open_current(path)) as conn:
                info = read_meta(conn, path)[1]
                store_latency(conn, table, info, path)
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"cannot store the latency table in {path} ({e}); check the file") from None


def read_latency(conn: sqlite3.Connection, path, info: ModelInfo) -> LatencyTable | None:
    """The latency table in an open profile file, or None if it has none."""
    meta_row = conn.execute("SELECT value FROM meta WHERE key = ?", (LATENCY_KEY,)).fetchone()
    rows = conn.execute("SELECT layer, format, act, seconds FROM latency").fetchall()
    if not rows and meta_row is None:
        return None
    fix = "measure it again with `mpsearch profile --latency`"
    if not rows or meta_row is None:
        raise ProfileError(f"{path} has latency {'times without their meta' if rows else 'meta without times'}; it "
                           f"is corrupt: {fix}")
    try:
        meta = json.loads(meta_row[0])
        formats, device = tuple(meta["formats"]), meta["device"]
        L, F = len(info.layers), len(formats)
        seconds, weight_only = np.full((L, F), np.nan), np.full((L, F), np.nan)
        for layer, fmt, act, sec in rows:
            if not (isinstance(layer, int) and 0 <= layer < L and fmt in formats and act in ("quant", "fp")
                    and isinstance(sec, (int, float)) and np.isfinite(sec) and sec >= 0):
                raise ValueError(f"row {(layer, fmt, act, sec)!r}")
            quantizes = get_format(fmt).quantizes_activations
            if act == "quant" and not quantizes:
                raise ValueError(f"{fmt} does not quantize activations, yet a row says it did")
            target = weight_only if (act == "fp" and quantizes) else seconds
            target[layer, formats.index(fmt)] = float(sec)
        table = LatencyTable(info.names, formats, seconds, weight_only, device,
                             {k: v for k, v in meta.items() if k not in ("formats", "device")})
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError, FormatError, UsageError) as e:
        raise ProfileError(f"{path} has a corrupt latency table ({type(e).__name__}: {e}); {fix}") from None
    return table
