"""The sensitivity profile: one SQLite file, written one unit of work at a time.

Tables:
  meta(key, value)                       JSON values: model info, configuration, versions
  units(unit, seconds)                   units of work that are complete (a unit = one batch of conditions)
  local(unit, layer, format, step, err2, ref2, out2, dot)
                                         sufficient statistics of a layer's output error, summed over the
                                         unit's batch: ||y_q - y||^2, ||y||^2, ||y_q||^2, <y, y_q>
  block_change(unit, block, step, diff2, ref2)
                                         ||o_t - o_{t-1}||^2 and ||o_t||^2 of each cacheable block's output
  sensitivity(unit, layer, step, g2, n)  sum of ||J^T u||^2 (J: the denoiser output's Jacobian with respect to
                                         the layer's output; u Rademacher) and the output's element count
                                         (mpsearch.profiling.sensitivity); absent in profiles made before it existed
  latency(layer, format, act, seconds)   optional (``mpsearch profile --latency``): seconds per denoiser call of
                                         each layer in each format, measured on one machine; ``act`` says what
                                         the activations were: 'quant' (quantized, as a W8A8/W4A4 format runs)
                                         or 'fp' (full precision: fp, weight-only formats, and the weight-only
                                         variant of W8A8/W4A4). Its device, torch version, threads and time are
                                         the meta key 'latency'. Written in one transaction, replaced whole.

Metrics (relative MSE, SQNR, cosine; ``gn``: the output error times g2 / n) are computed from the statistics summed over units, so a resumed or
sharded-and-merged profile gives exactly the numbers of a single run. The profile's digest covers the
sensitivity measurements and meta, not the latency table (a property of the machine that measured it, which
can be added or replaced later without changing what the profile says about the model).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpsearch.errors import ProfileError, UsageError
from mpsearch.io import apply_umask
from mpsearch.models import LayerInfo, ModelInfo, Role
from mpsearch.errors import FormatError
from mpsearch.formats import get_format
from mpsearch.metrics import get_metric, profile_metrics
from mpsearch.profiling.latency import LatencyTable

SCHEMA = 1
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (unit INTEGER PRIMARY KEY, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS local (unit INTEGER, layer INTEGER, format INTEGER, step INTEGER,
    err2 REAL, ref2 REAL, out2 REAL, dot REAL, PRIMARY KEY (unit, layer, format, step));
CREATE TABLE IF NOT EXISTS block_change (unit INTEGER, block INTEGER, step INTEGER, diff2 REAL, ref2 REAL,
    PRIMARY KEY (unit, block, step));
CREATE TABLE IF NOT EXISTS sensitivity (unit INTEGER, layer INTEGER, step INTEGER, g2 REAL, n REAL,
    PRIMARY KEY (unit, layer, step));
"""
_LATENCY_TABLE = """
CREATE TABLE IF NOT EXISTS latency (layer INTEGER, format TEXT, act TEXT, seconds REAL,
    PRIMARY KEY (layer, format, act));
"""
_LATENCY_KEY = "latency"  # meta key: device, torch, threads, measured_at, formats, and how it was measured
#: the metrics a profile's statistics give (``mpsearch.metrics.profile_metrics``: rel_mse, sqnr, cosine, gn)
LOCAL_METRICS = profile_metrics()


def info_to_dict(info: ModelInfo) -> dict:
    return {"class": info.denoiser_class, "fingerprint": info.fingerprint, "fixed_bytes": info.fixed_bytes,
            "layers": [l.to_dict() for l in info.layers], "tie_groups": [list(g) for g in info.tie_groups],
            "blocks": list(info.blocks)}


def info_from_dict(d: dict) -> ModelInfo:
    layers = tuple(LayerInfo(l["name"], l["kind"], tuple(l["shape"]), l["dtype"], Role(l["role"]),
                             tuple(l["eligible"]), dict(l.get("ineligible", {}))) for l in d["layers"])
    return ModelInfo(d["class"], layers, int(d["fixed_bytes"]), tuple(tuple(g) for g in d["tie_groups"]),
                     tuple(d["blocks"]))


def _connect(path, readonly: bool = False) -> sqlite3.Connection:
    """Open a profile file; SQL stored in the file (triggers, views) is refused, and schema functions are
    untrusted, so a profile is data only: it cannot make mpsearch run anything."""
    path = Path(path)
    if readonly:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    else:
        conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        odd = conn.execute("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')").fetchone()
    except BaseException:
        conn.close()
        raise
    if odd:
        conn.close()
        raise ProfileError(f"{path} contains a {odd[0]} ({odd[1]!r}), which no mpsearch profile has, so mpsearch "
                           "will not use it; delete it and profile again")
    return conn


class ProfileWriter:
    """Opens (or creates) a profile file for one model and configuration, and records units of work.

    ``weights`` (a digest of the candidate layers' weights, see ``models.weights_digest``) is recorded; resuming
    with other weights is refused, since the measurements would mix two models.
    """

    def __init__(self, path, info: ModelInfo, config: dict, versions: dict, weights: str | None = None):
        self.path = Path(path)
        self.info = info
        self.config = config
        existed = self.path.exists()
        try:
            if existed and self.path.is_file() and self.path.stat().st_size > 0:
                with contextlib.closing(_connect(self.path, readonly=True)) as probe:
                    tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "meta" not in tables:
                    raise ProfileError(f"{self.path} exists and is not an mpsearch profile; choose another --out "
                                       "(or delete it)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = _connect(self.path)
            self.conn.executescript(_TABLES)
        except sqlite3.DatabaseError as e:
            self._discard(existed)
            raise ProfileError(f"{self.path} is not a usable profile file ({e}); delete it or choose another --out") from None
        except OSError as e:
            self._discard(existed)
            raise ProfileError(f"cannot create profile {self.path}: {e}; choose a writable --out") from None
        except BaseException:
            self._discard(existed)
            raise
        meta = self._meta()
        expected = {"schema": SCHEMA, "model": info_to_dict(info), "config": config}
        if meta:
            _check_compatible(self.path, meta, expected)
            if weights is not None and meta.get("weights") not in (None, weights):
                raise ProfileError(f"{self.path} was measured on other weights ({meta['weights']}, the model now has "
                                   f"{weights}); profile these weights into another --out")
        else:
            with self.conn:
                for key, value in {**expected, "versions": versions, "weights": weights}.items():
                    self.conn.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def _discard(self, existed: bool) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
        if not existed:
            remove_profile_file(self.path)

    def _meta(self) -> dict:
        try:
            return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            raise ProfileError(f"{self.path} has a corrupt meta table ({e}); delete it and profile again") from None

    def done_units(self) -> set[int]:
        return {u for (u,) in self.conn.execute("SELECT unit FROM units")}

    def write_unit(self, unit: int, seconds: float, local_rows, block_rows, sensitivity_rows=()) -> None:
        """Record one unit's measurements in one transaction: all of it, or nothing."""
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO sensitivity VALUES (?, ?, ?, ?, ?)",
                                  [(unit, *r) for r in sensitivity_rows])
            self.conn.executemany("INSERT OR REPLACE INTO local VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                  [(unit, *r) for r in local_rows])
            self.conn.executemany("INSERT OR REPLACE INTO block_change VALUES (?, ?, ?, ?, ?)",
                                  [(unit, *r) for r in block_rows])
            self.conn.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (unit, seconds))

    def close(self) -> None:
        self.conn.close()


def remove_profile_file(path) -> None:
    """Delete a profile file and its SQLite journal, if there (used when a fresh profile fails to start)."""
    for p in (Path(path), Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if p.is_file():
                p.unlink()
        except OSError:
            pass


def resumable_units(path, info: ModelInfo, config: dict, weights: str | None = None) -> set[int]:
    """The finished units of the existing profile file ``path``, checked as resuming it checks it (same model,
    configuration and weights, else a ProfileError naming what differs); an empty set if there is no such file.
    The file is not created, and nothing is written to it, but it is opened for writing as resuming opens it, so
    that the journal of a writer killed mid-unit is rolled back (a read-only connection cannot read such a file)."""
    path = Path(path)
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return set()
    try:
        with contextlib.closing(_connect(path)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"meta", "units"} <= tables:
                raise ProfileError(f"{path} exists and is not an mpsearch profile; choose another --out (or delete it)")
            meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            units = {int(u) for (u,) in conn.execute("SELECT unit FROM units")}
    except (sqlite3.DatabaseError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ProfileError(f"{path} is not a usable profile file ({e}); delete it or choose another --out") from None
    if meta:
        _check_compatible(path, meta, {"schema": SCHEMA, "model": info_to_dict(info), "config": config})
        if weights is not None and meta.get("weights") not in (None, weights):
            raise ProfileError(f"{path} was measured on other weights ({meta['weights']}, the model now has "
                               f"{weights}); profile these weights into another --out")
    return units


def stored_config(path) -> dict | None:
    """The configuration recorded in an existing profile file (even one with no finished unit), or None if
    there is no such file or it is not a readable profile (the writer then says what is wrong)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(_connect(path, readonly=True)) as conn:
            return _read_meta(conn, path)[2]
    except (sqlite3.DatabaseError, ProfileError):
        return None


def stored_weights(path) -> str | None:
    """The weights digest recorded in an existing profile file, or None (no file, none recorded, unreadable)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(_connect(path, readonly=True)) as conn:
            weights = _read_meta(conn, path)[0].get("weights")
    except (sqlite3.DatabaseError, ProfileError):
        return None
    return weights if isinstance(weights, str) else None


def _check_compatible(path, meta: dict, expected: dict) -> None:
    if meta.get("schema") != SCHEMA:
        raise ProfileError(f"{path} has profile schema {meta.get('schema')!r}, expected {SCHEMA}; profile again")
    if meta.get("model", {}).get("fingerprint") != expected["model"]["fingerprint"]:
        raise ProfileError(f"{path} was made for another model ({meta.get('model', {}).get('class')}, "
                           f"{meta.get('model', {}).get('fingerprint')}); use another --out")
    if meta.get("config") != expected["config"]:
        diff = sorted(k for k in set(meta.get("config", {})) | set(expected["config"])
                      if meta.get("config", {}).get(k) != expected["config"].get(k))
        raise ProfileError(f"{path} was made with another configuration (differs in: {', '.join(diff)}); "
                           "use another --out or the same options")


@dataclass
class Profile:
    """A loaded profile: per-(layer, format, step) statistics and derived metrics, per-block changes."""

    path: Path | None
    info: ModelInfo
    config: dict
    versions: dict
    formats: tuple[str, ...]
    steps: int
    units: tuple[int, ...]
    stats: np.ndarray  # (L, F, S, 4): err2, ref2, out2, dot; NaN where the format is ineligible
    block_stats: np.ndarray  # (B, S, 2): diff2, ref2; NaN at step 0
    digest: str
    weights: str | None = None  # digest of the candidate layers' weights when profiled (None: older profile)
    end_to_end: dict | None = None  # summary of the end-to-end run made with it (mpsearch.allocation.endtoend), if any
    sensitivity: np.ndarray | None = None  # (L, S, 2): g2, n of the output sensitivity; None: not measured

    @property
    def metrics(self) -> tuple[str, ...]:
        """The local metrics this profile can give (``gn`` needs the output-sensitivity measurements)."""
        return tuple(m for m in LOCAL_METRICS if not get_metric(m).needs_sensitivity or self.sensitivity is not None)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.info.names

    @property
    def blocks(self) -> tuple[str, ...]:
        return self.info.blocks

    def metric(self, name: str) -> np.ndarray:
        """(layers, formats, steps) array of a profile metric (``mpsearch.metrics``' registry says how each is
        computed from the stored sums); NaN where a format is ineligible."""
        m = get_metric(name) if name in LOCAL_METRICS else None
        if m is None:
            raise ProfileError(f"unknown local metric {name!r}; expected one of {', '.join(LOCAL_METRICS)}")
        if m.needs_sensitivity and self.sensitivity is None:
            raise ProfileError(f"{self.path} has no output-sensitivity measurements (it was made before "
                               f"mpsearch measured them), so the {name!r} metric is unavailable; profile again "
                               "into a new file, or use --metric rel_mse")
        with np.errstate(divide="ignore", invalid="ignore"):
            return m.from_stats(self.stats, self.sensitivity)

    def errors(self, name: str) -> np.ndarray:
        """(layers, formats, steps) of :meth:`metric` turned into an error (0 = none, larger = worse)."""
        return get_metric(name).error(self.metric(name))

    def latency(self):
        """The latency table stored in the profile file (``mpsearch profile --latency``), or None if it has
        none (profiles written before latency tables existed, or never measured)."""
        if self.path is None or not Path(self.path).is_file():
            return None
        try:
            with contextlib.closing(_connect(self.path, readonly=True)) as conn:
                return _read_latency(conn, self.path, self.info)
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{self.path} is not a readable mpsearch profile ({e}); profile again") from None

    def block_change(self) -> np.ndarray:
        """(blocks, steps) relative change ||o_t - o_{t-1}||^2 / ||o_t||^2 of each cacheable block; NaN at step 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.block_stats[..., 0] / np.maximum(self.block_stats[..., 1], 1e-30)

    @classmethod
    def load(cls, path) -> "Profile":
        """Read a profile file (read-only); a missing, corrupt or foreign file is a ProfileError."""
        path = Path(path)
        if not path.is_file():
            raise ProfileError(f"profile {path} does not exist; run `mpsearch profile` first (or pass --profile)")
        try:
            with contextlib.closing(_connect(path, readonly=True)) as conn:
                return _read(conn, path)
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{path} is not a readable mpsearch profile ({e}); profile again") from None


def _read_meta(conn, path) -> tuple[dict, ModelInfo, dict]:
    """The meta table of an mpsearch profile, checked: (meta, model info, configuration)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"meta", "units", "local", "block_change"} <= tables:
        raise ProfileError(f"{path} is an SQLite file but not an mpsearch profile; profile again")
    try:
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        info = info_from_dict(meta["model"])
        config = meta["config"]
        int(config["steps"]), tuple(config["formats"])
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path} has a corrupt meta table ({type(e).__name__}: {e}); profile again") from None
    if meta.get("schema") != SCHEMA:
        raise ProfileError(f"{path} has profile schema {meta.get('schema')!r}, expected {SCHEMA}; profile again")
    return meta, info, config


def _unit_rows(conn, path, table: str, unit: int, ncols: int) -> np.ndarray:
    """One unit's rows of ``table`` in key order, as floats; text or NULL where a number belongs is corruption."""
    cols = {"local": "layer, format, step, err2, ref2, out2, dot", "block_change": "block, step, diff2, ref2"}[table]
    rows = conn.execute(f"SELECT {cols} FROM {table} WHERE unit = ? ORDER BY {cols.rsplit(',', ncols)[0]}",
                        (unit,)).fetchall()
    if any(not isinstance(v, (int, float)) for r in rows for v in r):
        raise ProfileError(f"{path} has a measurement that is not finite (text or NULL in {table}); it is corrupt: "
                           "delete it and profile again")
    return np.asarray(rows, dtype=float).reshape(len(rows), len(cols.split(",")))  # (0, k) when empty


def _read(conn, path) -> Profile:
    meta, info, config = _read_meta(conn, path)
    units = tuple(sorted(u for (u,) in conn.execute("SELECT unit FROM units")))
    if not units:
        raise ProfileError(f"{path} holds no finished unit of work; run `mpsearch profile` to fill it")
    formats = ("fp", *config["formats"])
    steps = int(config["steps"])
    L, F, S, B = len(info.layers), len(formats), steps, len(info.blocks)
    stats = np.zeros((L, F, S, 4))
    seen = np.zeros((L, F, S), dtype=bool)
    # summed unit by unit in unit order, so a resumed or merged file gives the same bits as a single run
    for unit in units:
        rows = _unit_rows(conn, path, "local", unit, 4)
        idx = rows[:, :3].astype(np.int64)
        layer, fmt, step = idx.T
        if not ((0 <= layer) & (layer < L) & (0 < fmt) & (fmt < F) & (0 <= step) & (step < S)).all():
            raise ProfileError(f"{path} has a measurement outside its layers/formats/steps; profile again")
        stats[layer, fmt, step] += rows[:, 3:]
        seen[layer, fmt, step] = True
    # fp: no error by definition; ineligible formats: NaN
    stats[:, 0, :, 0] = 0.0
    stats[:, 0, :, 1] = np.where(seen[:, 1:, :].any(1), stats[:, 1:, :, 1].max(1), 1.0)
    stats[:, 0, :, 2] = stats[:, 0, :, 1]
    stats[:, 0, :, 3] = stats[:, 0, :, 1]
    for li, layer in enumerate(info.layers):
        for fi, fmt in enumerate(formats[1:], start=1):
            if fmt not in layer.eligible:
                stats[li, fi] = np.nan
            elif not seen[li, fi].all():
                raise ProfileError(f"{path} lacks measurements for layer {layer.name} in {fmt}; profile again")
            elif not np.isfinite(stats[li, fi]).all():
                raise ProfileError(f"{path} has a measurement that is not finite for layer {layer.name} in {fmt}; "
                                   "it is corrupt: delete it and profile again")
    block_stats = np.full((B, S, 2), np.nan)
    block_seen = np.zeros((B, S), dtype=bool)
    for unit in units:
        rows = _unit_rows(conn, path, "block_change", unit, 2)
        idx = rows[:, :2].astype(np.int64)
        keep = (0 <= idx[:, 0]) & (idx[:, 0] < B) & (0 <= idx[:, 1]) & (idx[:, 1] < S)
        block, step = idx[keep].T
        fresh = ~block_seen[block, step]
        block_stats[block[fresh], step[fresh]] = 0.0
        block_stats[block, step] += rows[keep, 2:]
        block_seen[block, step] = True
    sens = _read_sensitivity(conn, path, units, L, S)
    sensitivity_meta = {k: v for k, v in meta.items() if k != _LATENCY_KEY}  # a latency table leaves it alone
    digest = "sha256:" + hashlib.sha256(stats.tobytes() + (b"" if sens is None else sens.tobytes())
                                        + json.dumps(sensitivity_meta, sort_keys=True).encode()).hexdigest()[:24]
    return Profile(path, info, config, meta.get("versions", {}), formats, steps, units, stats, block_stats, digest,
                   meta.get("weights"), sensitivity=sens)


def _read_sensitivity(conn, path, units, L: int, S: int) -> np.ndarray | None:
    """(L, S, 2) output-sensitivity sums over ``units``, in unit order; None unless every unit has them."""
    has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='sensitivity'").fetchone()
    if not has_table:
        return None
    sens = np.zeros((L, S, 2))
    for unit in units:
        rows = np.array(conn.execute("SELECT layer, step, g2, n FROM sensitivity WHERE unit = ? ORDER BY layer, step",
                                     (unit,)).fetchall(), dtype=float).reshape(-1, 4)
        if len(rows) != L * S:
            return None  # a unit profiled before sensitivity was measured (or by an older version)
        idx = rows[:, :2].astype(np.int64)
        if not ((0 <= idx[:, 0]) & (idx[:, 0] < L) & (0 <= idx[:, 1]) & (idx[:, 1] < S)).all() \
                or not np.isfinite(rows[:, 2:]).all() or (rows[:, 2:] < 0).any():
            raise ProfileError(f"{path} has an output-sensitivity measurement outside its layers/steps or not a "
                               "finite non-negative number; it is corrupt: delete it and profile again")
        sens[idx[:, 0], idx[:, 1]] += rows[:, 2:]
    return sens


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


def _write_latency(conn, table, info: ModelInfo, path) -> None:
    """Replace the file's latency table with ``table``, in one transaction (all of it, or nothing)."""
    rows = _latency_rows(table, info, path)
    meta = {**table.meta, "device": table.device, "formats": list(table.formats)}
    conn.executescript(_LATENCY_TABLE)
    with conn:
        conn.execute("DELETE FROM latency")
        conn.executemany("INSERT INTO latency VALUES (?, ?, ?, ?)", rows)
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_LATENCY_KEY, json.dumps(meta, sort_keys=True)))


def write_latency(path, table) -> None:
    """Store ``table`` (a ``latency.LatencyTable`` of the profiled model) in the profile file ``path``, replacing
    any table there, atomically. The profile's digest does not change."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile {path} does not exist; run `mpsearch profile` first")
    try:
        with contextlib.closing(_connect(path)) as conn:
            info = _read_meta(conn, path)[1]
            _write_latency(conn, table, info, path)
    except sqlite3.DatabaseError as e:
        raise ProfileError(f"cannot store the latency table in {path} ({e}); check the file") from None


def _read_latency(conn, path, info: ModelInfo):
    """The latency table in an open profile file, or None if it has none."""

    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    meta_row = conn.execute("SELECT value FROM meta WHERE key = ?", (_LATENCY_KEY,)).fetchone()
    rows = conn.execute("SELECT layer, format, act, seconds FROM latency").fetchall() if "latency" in tables else []
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


def merge_profiles(inputs, out) -> Profile:
    """Merge the shard files of one profile (``mpsearch profile --shard i/n``) into ``out``, atomically.

    The shards must share the model, its weights, the configuration and the versions that measured them;
    otherwise nothing is written and the error names what differs. Every finished unit of every shard is
    copied (a unit found in two shards must hold identical measurements), so the merged file equals, in
    content, the file one process would have written (only the per-unit wall times in ``units`` differ).

    A latency table (``mpsearch profile --latency``) belongs to the machine that measured it, not to a shard's
    units, so it is carried whole, never mixed: the most recently measured one among the inputs that have one
    (``Profile.latency()`` of the result says its device and time).
    """
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if not paths:
        raise UsageError("merge needs at least one profile file; pass the shard files to merge")
    first: tuple[Path, dict] | None = None
    latest = None  # the most recently measured latency table of the inputs
    for p in paths:  # every input is checked before anything is written
        if not p.is_file():
            raise ProfileError(f"profile {p} does not exist; check the shard paths")
        if out.exists() and out.resolve() == p.resolve():
            raise UsageError(f"--out {out} is also an input; write the merge to a new file")
        try:
            with contextlib.closing(_connect(p, readonly=True)) as conn:
                meta, info = _read_meta(conn, p)[:2]
                table = _read_latency(conn, p, info)
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{p} is not a readable mpsearch profile ({e}); profile that shard again") from None
        if table is not None and (latest is None or str(table.meta.get("measured_at", "")) >
                                  str(latest.meta.get("measured_at", ""))):
            latest = table
        if first is None:
            first = (p, meta)
            continue
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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            apply_umask(fd)  # the merged profile gets the user's umask, not mkstemp's 0600
        finally:
            os.close(fd)
    except OSError as e:
        raise ProfileError(f"cannot write {out}: {e.strerror or e}; choose a writable --out") from None
    try:
        with contextlib.closing(sqlite3.connect(tmp, uri=True)) as conn:
            conn.executescript(_TABLES)
            for n, p in enumerate(paths):
                conn.execute("ATTACH DATABASE ? AS src", (p.resolve().as_uri() + "?mode=ro",))
                try:
                    _merge_one(conn, p, copy_meta=(n == 0))
                finally:
                    conn.execute("DETACH DATABASE src")
            with conn:  # the first input's meta came with its latency key: the chosen table replaces it
                conn.execute("DELETE FROM meta WHERE key = ?", (_LATENCY_KEY,))
            if latest is not None:
                _write_latency(conn, latest, info_from_dict(first[1]["model"]), out)
        merged = Profile.load(tmp)
        os.replace(tmp, out)
    except BaseException as e:
        remove_profile_file(tmp)
        if isinstance(e, sqlite3.DatabaseError):
            raise ProfileError(f"cannot merge into {out} ({e}); check the shard files and the --out folder") from None
        if isinstance(e, OSError):
            raise ProfileError(f"cannot write {out}: {e.strerror or e}; choose a writable --out") from None
        raise
    merged.path = out
    return merged


_MERGE_KEYS = {"local": "layer, format, step, err2, ref2, out2, dot", "block_change": "block, step, diff2, ref2",
               "sensitivity": "layer, step, g2, n"}


def _merge_one(conn, path, copy_meta: bool) -> None:
    """Copy the attached shard ``src``'s finished units into main; a unit already there must match exactly."""
    present = {r[0] for r in conn.execute("SELECT name FROM src.sqlite_master WHERE type='table'")}
    keys = {t: c for t, c in _MERGE_KEYS.items() if t in present}  # older shards have no sensitivity table
    for (unit,) in conn.execute("SELECT unit FROM src.units WHERE unit IN (SELECT unit FROM main.units)").fetchall():
        for table, cols in keys.items():
            a = f"SELECT {cols} FROM main.{table} WHERE unit = ?"
            b = f"SELECT {cols} FROM src.{table} WHERE unit = ?"
            differs = conn.execute(f"SELECT 1 FROM ({a} EXCEPT {b}) UNION ALL SELECT 1 FROM ({b} EXCEPT {a}) LIMIT 1",
                                   (unit, unit, unit, unit)).fetchone()
            if differs:
                raise ProfileError(f"unit {unit} is in two of the files with different measurements ({path} and an "
                                   "earlier one); merge shards of one run, or delete one and profile it again")
    with conn:
        if copy_meta:
            conn.execute("INSERT INTO main.meta SELECT key, value FROM src.meta")
        new = "unit IN (SELECT unit FROM src.units) AND unit NOT IN (SELECT unit FROM main.units)"
        for table, cols in keys.items():
            conn.execute(f"INSERT INTO main.{table} (unit, {cols}) SELECT unit, {cols} FROM src.{table} WHERE {new}")
        conn.execute("INSERT INTO main.units (unit, seconds) SELECT unit, seconds FROM src.units "
                     "WHERE unit NOT IN (SELECT unit FROM main.units)")
