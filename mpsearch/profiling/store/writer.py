"""Writing a profile file: :class:`ProfileWriter` (one unit of work per transaction, one writer per file) and
the checks a resumed run makes before writing (:func:`resumable_units`, :func:`stored_config`,
:func:`stored_weights`)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from mpsearch.errors import ProfileError
from mpsearch.io import apply_umask
from mpsearch.models import ModelInfo
from mpsearch.profiling.store.calibration import has_calibration, read_calibration, write_calibration
from mpsearch.profiling.store.files import remove_profile_file, writer_lock
from mpsearch.profiling.store.schema import (
    MODEL_SOURCE_KEY,
    REQUIRED_TABLES,
    SCHEMA,
    connect,
    create_tables,
    info_to_dict,
    open_current,
    read_meta,
    table_names,
)

__all__ = ["ProfileWriter", "check_compatible", "resumable_units", "stored_config", "stored_weights"]


class ProfileWriter:
    """Opens (or creates) a profile file for one model and configuration, and records units of work.

    Only one writer at a time: it holds the file's lock (``<path>.lock``) until :meth:`close`, and a second
    writer gets a ``ProfileBusyError`` naming this process. ``weights`` (a digest of the candidate layers'
    weights, see ``models.weights_digest``) is recorded; resuming with other weights is refused, since the
    measurements would mix two models. ``shard`` (i, n) is recorded, so a partial file can say which shards it
    lacks (:meth:`Profile.missing_shards`). ``source`` (where the model was loaded from: an embedded name or a
    folder's absolute path) is recorded as :attr:`Profile.model_source`; a resumed file takes the newest one.
    :attr:`created` says whether this writer created the file.
    """

    def __init__(self, path, info: ModelInfo, config: dict, versions: dict, weights: str | None = None,
                 shard: tuple[int, int] = (0, 1), source: str | None = None):
        self.path = Path(path)
        self.info = info
        self.config = config
        self.conn: sqlite3.Connection = None  # type: ignore[assignment]  # None once closed
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ProfileError(f"cannot create profile {self.path}: {e.strerror or e}; choose a writable --out") \
                from None
        self._lock = writer_lock(self.path)  # decided under the lock: no other writer can create it meanwhile
        existed = self.path.exists()
        self.created = not existed
        try:
            self._open(info, config, versions, weights, shard, source, check_existing=existed and self.path.is_file()
                       and self.path.stat().st_size > 0)
        except BaseException:
            self._discard()
            raise

    def _open(self, info: ModelInfo, config: dict, versions: dict, weights: str | None, shard,
              source: str | None, check_existing: bool) -> None:
        try:
            if check_existing:
                with contextlib.closing(open_current(self.path, readonly=True)) as probe:
                    if "meta" not in table_names(probe):
                        raise ProfileError(f"{self.path} exists and is not an mpsearch profile; choose another --out "
                                           "(or delete it)")
            self.conn = open_current(self.path)
            if self.created:
                apply_umask(self.path)
            meta = self._meta() if "meta" in table_names(self.conn) else {}
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{self.path} is not a usable profile file ({e}); delete it or choose another --out") \
                from None
        except OSError as e:
            raise ProfileError(f"cannot create profile {self.path}: {e.strerror or e}; choose a writable --out") \
                from None
        expected = {"schema": SCHEMA, "model": info_to_dict(info), "config": config}
        if meta:
            check_compatible(self.path, meta, expected)
            if weights is not None and meta.get("weights") not in (None, weights):
                raise ProfileError(f"{self.path} was measured on other weights ({meta['weights']}, the model now has "
                                   f"{weights}); profile these weights into another --out")
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            create_tables(self.conn)
            if not meta:
                self.conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                      [(k, json.dumps(v, sort_keys=True)) for k, v in
                                       {**expected, "versions": versions, "weights": weights}.items()])
            if source is not None:  # where the model is now: a resumed file follows a moved folder
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (MODEL_SOURCE_KEY, json.dumps(source)))
            self.conn.execute("INSERT OR IGNORE INTO shards VALUES (?, ?)", tuple(shard))

    def _discard(self) -> None:
        """Close, remove the file if this writer created it, and give the lock up."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None  # type: ignore[assignment]
        if self.created:
            remove_profile_file(self.path)
        self._lock.release()

    def _meta(self) -> dict:
        try:
            return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            raise ProfileError(f"{self.path} has a corrupt meta table ({e}); delete it and profile again") from None

    def done_units(self) -> set[int]:
        return {u for (u,) in self.conn.execute("SELECT unit FROM units")}

    def has_calibration(self) -> bool:
        """Whether the file already holds the calibrated variants' input statistics."""
        return has_calibration(self.conn)

    def read_calibration(self, info: ModelInfo) -> dict:
        """Layer name -> Calibration recorded in the file."""
        return read_calibration(self.conn, self.path, info)

    def write_calibration(self, calibrations: dict) -> None:
        """Record every layer's calibration (layer index -> Calibration) in one transaction."""
        try:
            with self.conn:
                write_calibration(self.conn, calibrations)
        except sqlite3.OperationalError as e:
            raise ProfileError(f"cannot record the calibration in {self.path} ({e}); fix that and run the same "
                               "command again") from None

    def write_unit(self, unit: int, seconds: float, local_rows, block_rows, sensitivity_rows=()) -> None:
        """Record one unit's measurements in one transaction: all of it, or nothing."""
        try:
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO sensitivity VALUES (?, ?, ?, ?, ?)",
                                      [(unit, *r) for r in sensitivity_rows])
                self.conn.executemany("INSERT OR REPLACE INTO local VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                      [(unit, *r) for r in local_rows])
                self.conn.executemany("INSERT OR REPLACE INTO block_change VALUES (?, ?, ?, ?, ?)",
                                      [(unit, *r) for r in block_rows])
                self.conn.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (unit, seconds))
        except sqlite3.OperationalError as e:  # a disk that is full or gone, a reader holding the file too long
            raise ProfileError(f"cannot record unit {unit} in {self.path} ({e}); the finished units are kept: fix "
                               "that and run the same command again to resume") from None

    def abandon(self) -> None:
        """Close after a failure: the file is removed if this writer created it and it holds no finished unit
        (a file another process created is never removed); the lock is given up."""
        if self.conn is None:
            return
        empty = not self.done_units()
        self.conn.close()
        self.conn = None  # type: ignore[assignment]
        if self.created and empty:
            remove_profile_file(self.path)
        self._lock.release()

    def close(self) -> None:
        """Close the file and give the lock up."""
        if self.conn is None:
            return
        self.conn.close()
        self.conn = None  # type: ignore[assignment]
        self._lock.release()


def resumable_units(path, info: ModelInfo, config: dict, weights: str | None = None) -> set[int]:
    """The finished units of the existing profile file ``path``, checked as resuming it checks it (same model,
    configuration and weights, else a ProfileError naming what differs); an empty set if there is no such file.
    The file is not created, and nothing is written to it, but it is opened for writing as resuming opens it, so
    that the journal of a writer killed mid-unit is rolled back (a read-only connection cannot read such a file)."""
    path = Path(path)
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return set()
    try:
        connect(path).close()  # opened for writing: rolls back the journal of a writer killed mid-unit
        with contextlib.closing(open_current(path, readonly=True)) as conn:  # a schema-1 file stays as it is
            if not REQUIRED_TABLES <= table_names(conn):
                raise ProfileError(f"{path} exists and is not an mpsearch profile; choose another --out (or delete it)")
            meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            units = {int(u) for (u,) in conn.execute("SELECT unit FROM units")}
    except (sqlite3.DatabaseError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ProfileError(f"{path} is not a usable profile file ({e}); delete it or choose another --out") from None
    if meta:
        check_compatible(path, meta, {"schema": SCHEMA, "model": info_to_dict(info), "config": config})
        if weights is not None and meta.get("weights") not in (None, weights):
            raise ProfileError(f"{path} was measured on other weights ({meta['weights']}, the model now has "
                               f"{weights}); profile these weights into another --out")
    return units


def _stored_meta(path) -> dict | None:
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(open_current(path, readonly=True)) as conn:
            return read_meta(conn, path)[0]
    except (sqlite3.DatabaseError, ProfileError):
        return None


def stored_config(path) -> dict | None:
    """The configuration recorded in an existing profile file (even one with no finished unit), or None if
    there is no such file or it is not a readable profile (the writer then says what is wrong)."""
    meta = _stored_meta(path)
    return None if meta is None else meta["config"]


def stored_weights(path) -> str | None:
    """The weights digest recorded in an existing profile file, or None (no file, none recorded, unreadable)."""
    meta = _stored_meta(path)
    weights = None if meta is None else meta.get("weights")
    return weights if isinstance(weights, str) else None


def check_compatible(path, meta: dict, expected: dict) -> None:
    """Refuse (ProfileError) to add to the file whose ``meta`` is given measurements of another schema, model
    or configuration than ``expected``."""
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
