"""The sensitivity profile: one SQLite file, written one unit of work at a time.

Tables:
  meta(key, value)                       JSON values: model info, configuration, versions
  units(unit, seconds)                   units of work that are complete (a unit = one batch of conditions)
  local(unit, layer, format, step, err2, ref2, out2, dot)
                                         sufficient statistics of a layer's output error, summed over the
                                         unit's batch: ||y_q - y||^2, ||y||^2, ||y_q||^2, <y, y_q>
  block_change(unit, block, step, diff2, ref2)
                                         ||o_t - o_{t-1}||^2 and ||o_t||^2 of each cacheable block's output

Metrics (relative MSE, SQNR, cosine) are computed from the statistics summed over units, so a resumed or
sharded-and-merged profile gives exactly the numbers of a single run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ProfileError
from .models import LayerInfo, ModelInfo, Role

SCHEMA = 1
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (unit INTEGER PRIMARY KEY, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS local (unit INTEGER, layer INTEGER, format INTEGER, step INTEGER,
    err2 REAL, ref2 REAL, out2 REAL, dot REAL, PRIMARY KEY (unit, layer, format, step));
CREATE TABLE IF NOT EXISTS block_change (unit INTEGER, block INTEGER, step INTEGER, diff2 REAL, ref2 REAL,
    PRIMARY KEY (unit, block, step));
"""
LOCAL_METRICS = ("rel_mse", "sqnr", "cosine")


def info_to_dict(info: ModelInfo) -> dict:
    return {"class": info.denoiser_class, "fingerprint": info.fingerprint, "fixed_bytes": info.fixed_bytes,
            "layers": [l.to_dict() for l in info.layers], "tie_groups": [list(g) for g in info.tie_groups],
            "blocks": list(info.blocks)}


def info_from_dict(d: dict) -> ModelInfo:
    layers = tuple(LayerInfo(l["name"], l["kind"], tuple(l["shape"]), l["dtype"], Role(l["role"]),
                             tuple(l["eligible"]), dict(l.get("ineligible", {}))) for l in d["layers"])
    return ModelInfo(d["class"], layers, int(d["fixed_bytes"]), tuple(tuple(g) for g in d["tie_groups"]),
                     tuple(d["blocks"]))


class ProfileWriter:
    """Opens (or creates) a profile file for one model and configuration, and records units of work."""

    def __init__(self, path, info: ModelInfo, config: dict, versions: dict):
        self.path = Path(path)
        self.info = info
        self.config = config
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.executescript(_TABLES)
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{self.path} is not a usable profile file ({e}); delete it or choose another --out") from None
        except OSError as e:
            raise ProfileError(f"cannot create profile {self.path}: {e}; choose a writable --out") from None
        meta = self._meta()
        expected = {"schema": SCHEMA, "model": info_to_dict(info), "config": config}
        if meta:
            _check_compatible(self.path, meta, expected)
        else:
            with self.conn:
                for key, value in {**expected, "versions": versions}.items():
                    self.conn.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def _meta(self) -> dict:
        try:
            return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            raise ProfileError(f"{self.path} has a corrupt meta table ({e}); delete it and profile again") from None

    def done_units(self) -> set[int]:
        return {u for (u,) in self.conn.execute("SELECT unit FROM units")}

    def write_unit(self, unit: int, seconds: float, local_rows, block_rows) -> None:
        """Record one unit's measurements in one transaction: all of it, or nothing."""
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO local VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                  [(unit, *r) for r in local_rows])
            self.conn.executemany("INSERT OR REPLACE INTO block_change VALUES (?, ?, ?, ?, ?)",
                                  [(unit, *r) for r in block_rows])
            self.conn.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (unit, seconds))

    def close(self) -> None:
        self.conn.close()


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

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.info.names

    @property
    def blocks(self) -> tuple[str, ...]:
        return self.info.blocks

    def metric(self, name: str) -> np.ndarray:
        """(layers, formats, steps) array of a local metric; NaN where a format is ineligible."""
        err2, ref2, out2, dot = (self.stats[..., i] for i in range(4))
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "rel_mse":
                return err2 / np.maximum(ref2, 1e-30)
            if name == "sqnr":
                return np.minimum(200.0, 10 * np.log10(np.maximum(ref2, 1e-30) / np.maximum(err2, 1e-30)))
            if name == "cosine":
                return dot / np.maximum(np.sqrt(ref2 * out2), 1e-30)
        raise ProfileError(f"unknown local metric {name!r}; expected one of {', '.join(LOCAL_METRICS)}")

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
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return _read(conn, path)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{path} is not a readable mpsearch profile ({e}); profile again") from None


def _read(conn, path) -> Profile:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"meta", "units", "local", "block_change"} <= tables:
        raise ProfileError(f"{path} is an SQLite file but not an mpsearch profile; profile again")
    try:
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        info = info_from_dict(meta["model"])
        config = meta["config"]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path} has a corrupt meta table ({e}); profile again") from None
    if meta.get("schema") != SCHEMA:
        raise ProfileError(f"{path} has profile schema {meta.get('schema')!r}, expected {SCHEMA}; profile again")
    units = tuple(sorted(u for (u,) in conn.execute("SELECT unit FROM units")))
    if not units:
        raise ProfileError(f"{path} holds no finished unit of work; run `mpsearch profile` to fill it")
    formats = ("fp", *config["formats"])
    steps = int(config["steps"])
    L, F, S, B = len(info.layers), len(formats), steps, len(info.blocks)
    stats = np.zeros((L, F, S, 4))
    q = ("SELECT layer, format, step, SUM(err2), SUM(ref2), SUM(out2), SUM(dot) FROM local "
         "WHERE unit IN (SELECT unit FROM units) GROUP BY layer, format, step")
    seen = np.zeros((L, F, S), dtype=bool)
    for layer, fmt, step, *vals in conn.execute(q):
        if not (0 <= layer < L and 0 < fmt < F and 0 <= step < S):
            raise ProfileError(f"{path} has a measurement outside its layers/formats/steps; profile again")
        stats[layer, fmt, step] = vals
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
    block_stats = np.full((B, S, 2), np.nan)
    q = ("SELECT block, step, SUM(diff2), SUM(ref2) FROM block_change WHERE unit IN (SELECT unit FROM units) "
         "GROUP BY block, step")
    for block, step, d2, r2 in conn.execute(q):
        if 0 <= block < B and 0 <= step < S:
            block_stats[block, step] = (d2, r2)
    digest = "sha256:" + hashlib.sha256(stats.tobytes() + json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
    return Profile(path, info, config, meta.get("versions", {}), formats, steps, units, stats, block_stats, digest)
