"""The profile file's tables, its schema version and the one migration (1 or 2 -> 3); opening a file safely.

Schema 3 (every table is created with the file, so no reader asks whether a table exists)::

  meta(key, value)                       JSON values: model info, configuration, versions, weights, schema,
                                         and model_source (where the model was loaded from; not in the digest)
  units(unit, seconds)                   units of work that are complete (a unit = one seed's batch of conditions)
  shards(i, n)                           the shards (``--shard i/n``) whose writers wrote into the file; merged
                                         files hold every input's
  local(unit, layer, format, step, err2, ref2, out2, dot)
                                         sufficient statistics of a layer's output error, summed over the
                                         unit's batch: ||y_q - y||^2, ||y||^2, ||y_q||^2, <y, y_q>
  block_change(unit, block, step, diff2, ref2)
                                         ||o_t - o_{t-1}||^2 and ||o_t||^2 of each cacheable block's output
  sensitivity(unit, layer, step, g2, n)  sum of ||J^T u||^2 (J: the denoiser output's Jacobian with respect to
                                         the layer's output; u Rademacher) and the output's element count
  latency(layer, format, act, seconds)   seconds per denoiser call of each layer in each format on one machine
                                         (:mod:`~mpsearch.profiling.store.latency`)
  e2e_runs, e2e_units, e2e               the end-to-end tier's runs (:mod:`~mpsearch.profiling.store.endtoend`)
  calibration(layer, key, dtype, shape, data)
                                         the calibrated quantizer variants' input statistics of each layer
                                         (:class:`mpsearch.quantizers.Calibration`: x2, xmax, hessian), raw
                                         little-endian float32 bytes with their shape (JSON); written once

Schema 2 lacked only the calibration table; schema 1 (mpsearch before the store package) had the same tables as 2,
but created the optional ones (shards, sensitivity, latency, e2e_*) only when first written. :func:`migrate`
creates the missing ones and records schema 3; nothing else differs, so an older file loses nothing.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from mpsearch.errors import ProfileError
from mpsearch.models import LayerInfo, ModelInfo, Role

__all__ = ["SCHEMA", "TABLES", "connect", "table_names", "migrate", "open_current", "create_tables",
           "read_meta", "file_version", "info_to_dict", "info_from_dict", "REQUIRED_TABLES", "MODEL_SOURCE_KEY"]

#: the schema version this mpsearch writes; versions 1 and 2 are migrated (:func:`migrate`), others are refused
SCHEMA = 3
#: the older versions :func:`migrate` brings to :data:`SCHEMA` (they lack only tables)
MIGRATED = (1, 2)
#: every table of a schema-2 file, by name: its CREATE statement
TABLES = {
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "units": "CREATE TABLE IF NOT EXISTS units (unit INTEGER PRIMARY KEY, seconds REAL NOT NULL)",
    "shards": "CREATE TABLE IF NOT EXISTS shards (i INTEGER, n INTEGER, PRIMARY KEY (i, n))",
    "local": "CREATE TABLE IF NOT EXISTS local (unit INTEGER, layer INTEGER, format INTEGER, step INTEGER, "
             "err2 REAL, ref2 REAL, out2 REAL, dot REAL, PRIMARY KEY (unit, layer, format, step))",
    "block_change": "CREATE TABLE IF NOT EXISTS block_change (unit INTEGER, block INTEGER, step INTEGER, diff2 REAL, "
                    "ref2 REAL, PRIMARY KEY (unit, block, step))",
    "sensitivity": "CREATE TABLE IF NOT EXISTS sensitivity (unit INTEGER, layer INTEGER, step INTEGER, g2 REAL, "
                   "n REAL, PRIMARY KEY (unit, layer, step))",
    "latency": "CREATE TABLE IF NOT EXISTS latency (layer INTEGER, format TEXT, act TEXT, seconds REAL, "
               "PRIMARY KEY (layer, format, act))",
    "e2e_runs": "CREATE TABLE IF NOT EXISTS e2e_runs (run TEXT PRIMARY KEY, config TEXT NOT NULL)",
    "e2e_units": "CREATE TABLE IF NOT EXISTS e2e_units (run TEXT, unit TEXT, layers TEXT, format TEXT, "
                 "start INTEGER, stop INTEGER, kind TEXT, seconds REAL, PRIMARY KEY (run, unit))",
    "e2e": "CREATE TABLE IF NOT EXISTS e2e (run TEXT, unit TEXT, metric TEXT, value REAL, "
           "PRIMARY KEY (run, unit, metric))",
    "calibration": "CREATE TABLE IF NOT EXISTS calibration (layer INTEGER, key TEXT, dtype TEXT NOT NULL, "
                   "shape TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (layer, key))",
}
#: meta key: the embedded model's name or the pipeline folder's absolute path the profiled model was loaded from.
#: Where the file's model can be found again, not what was measured: it is no part of the configuration, of the
#: digest, or of the checks that shards agree (shards made on other machines have other paths)
MODEL_SOURCE_KEY = "model_source"
#: the tables every profile has had since schema 1; a file without them is not an mpsearch profile
REQUIRED_TABLES = frozenset({"meta", "units", "local", "block_change"})


def connect(path, readonly: bool = False) -> sqlite3.Connection:
    """Open a profile file; SQL stored in the file (triggers, views) is refused, and schema functions are
    untrusted, so a profile is data only: it cannot make mpsearch run anything."""
    path = Path(path)
    if readonly:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
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


def table_names(conn: sqlite3.Connection, schema: str = "main") -> set[str]:
    """The names of the tables in ``schema`` (an attached database's name, or main)."""
    return {r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type='table'")}


def create_tables(conn: sqlite3.Connection) -> None:
    """Create every table of the current schema that is not there yet (inside the caller's transaction)."""
    for ddl in TABLES.values():
        conn.execute(ddl)


def file_version(conn: sqlite3.Connection, path) -> tuple[object, dict]:
    """(schema version, the versions that wrote it) recorded in an open profile file's meta."""
    try:
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('schema', 'versions')").fetchall())
        return json.loads(rows.get("schema", "null")), json.loads(rows.get("versions", "{}"))
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path} has a corrupt meta table ({type(e).__name__}: {e}); profile again") from None


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an open schema-1 or schema-2 profile to the current schema, in place and in one transaction: they
    lack at most some tables, which are created empty, and the meta then says the current schema."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        create_tables(conn)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (json.dumps(SCHEMA),))


def open_current(path, readonly: bool = False) -> sqlite3.Connection:
    """Open the profile file ``path`` at the current schema: a schema-1 file is migrated (in place when writing;
    read-only, into an in-memory copy, so reading never changes a file); any other version is a ProfileError
    naming it and the mpsearch that wrote it. A file without the profile tables is left for the caller to refuse."""
    conn = connect(path, readonly=readonly)
    try:
        if not REQUIRED_TABLES <= table_names(conn):
            return conn
        version, versions = file_version(conn, path)
        if version == SCHEMA:
            return conn
        if version not in MIGRATED:
            made = f"mpsearch {versions.get('mpsearch')}" if isinstance(versions, dict) else "another mpsearch"
            raise ProfileError(f"{path} has profile schema {version!r} (written by {made}); this mpsearch reads "
                               f"schema {SCHEMA} (and upgrades 1 and 2): profile again into a new --out with this "
                               "mpsearch")
        if readonly:
            memory = sqlite3.connect(":memory:")
            conn.backup(memory)
            conn.close()
            conn = memory
            conn.execute("PRAGMA trusted_schema = OFF")
        migrate(conn)
        return conn
    except BaseException:
        conn.close()
        raise


def info_to_dict(info: ModelInfo) -> dict:
    """The model description as stored in the profile's meta."""
    return {"class": info.denoiser_class, "fingerprint": info.fingerprint, "fixed_bytes": info.fixed_bytes,
            "layers": [l.to_dict() for l in info.layers], "tie_groups": [list(g) for g in info.tie_groups],
            "blocks": list(info.blocks)}


def info_from_dict(d: dict) -> ModelInfo:
    """The ModelInfo stored by :func:`info_to_dict`."""
    layers = tuple(LayerInfo(l["name"], l["kind"], tuple(l["shape"]), l["dtype"], Role(l["role"]),
                             tuple(l["eligible"]), dict(l.get("ineligible", {}))) for l in d["layers"])
    return ModelInfo(d["class"], layers, int(d["fixed_bytes"]), tuple(tuple(g) for g in d["tie_groups"]),
                     tuple(d["blocks"]))


def read_meta(conn: sqlite3.Connection, path) -> tuple[dict, ModelInfo, dict]:
    """The meta table of an open mpsearch profile (from :func:`open_current`), checked: (meta, model info,
    configuration)."""
    if not REQUIRED_TABLES <= table_names(conn):
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

