"""Reading a profile file: :class:`Profile`.

Metrics (relative MSE, SQNR, cosine; ``gn``: the output error times g2 / n) are computed from the statistics
summed over units, so a resumed or sharded-and-merged profile gives exactly the numbers of a single run. The
profile's digest covers the sensitivity measurements and meta (less the latency table, a property of the machine
that measured it, the schema version, a property of the file, and the model source, where the model was loaded
from), so migrating a file keeps its digest, and so does profiling one model from another folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpsearch.errors import ProfileError
from mpsearch.metrics import get_metric, profile_metrics
from mpsearch.models import ModelInfo
from mpsearch.profiling.latency import LatencyTable
from mpsearch.profiling.store.calibration import read_calibration
from mpsearch.profiling.store.latency import LATENCY_KEY, read_latency
from mpsearch.profiling.store.schema import MODEL_SOURCE_KEY, open_current, read_meta

__all__ = ["LOCAL_METRICS", "Profile"]

#: the metrics a profile's statistics give (``mpsearch.metrics.profile_metrics``: rel_mse, sqnr, cosine, gn)
LOCAL_METRICS = profile_metrics()


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
    end_to_end: dict | None = None  # summary of the end-to-end run made with it (mpsearch.allocation.decoupled), if any
    sensitivity: np.ndarray | None = None  # (L, S, 2): g2, n of the output sensitivity; None: not measured
    shards: tuple[tuple[int, int], ...] = ()  # the (i, n) of the shard runs that wrote the file; () if unknown
    model_source: str | None = None  # the embedded name or folder path the model was loaded from; None: unrecorded
    _calibration: dict | None = field(default=None, init=False, repr=False, compare=False)  # read on first use

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

    @property
    def expected_units(self) -> tuple[int, ...]:
        """The units of work of the whole profile: one per seed of its configuration."""
        return tuple(range(len(self.config.get("seeds", ()))))

    def missing_units(self) -> tuple[int, ...]:
        """The units of the whole profile that this file lacks (empty when it is complete)."""
        done = set(self.units)
        return tuple(u for u in self.expected_units if u not in done)

    @property
    def is_complete(self) -> bool:
        """Whether the file holds every unit of its configuration."""
        return not self.missing_units()

    def missing_shards(self) -> tuple[tuple[int, int], ...]:
        """For a file written in shards (``--shard i/n``): the shards (i, n) that would supply its missing units,
        in the split(s) its writers used; () when complete or when it was written without sharding."""
        missing = self.missing_units()
        splits = sorted({n for _, n in self.shards if n > 1})
        return tuple((i, n) for n in splits for i in range(n) if any(u % n == i for u in missing))

    def check_complete(self) -> None:
        """Raise a ProfileError naming the missing units (and shards, and the fix) unless the file is complete."""
        missing = self.missing_units()
        if not missing:
            return
        seeds = self.config.get("seeds", ())
        listed = ", ".join(f"{u} (seed {seeds[u]})" for u in missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        shards = self.missing_shards()
        if shards:
            fix = ("profile the missing shards (" + ", ".join(f"--shard {i}/{n}" for i, n in shards) + ") and "
                   "`mpsearch profile merge` them with this file")
        else:
            fix = f"run `mpsearch profile` again with --out {self.path} and the same options to finish it"
        raise ProfileError(f"{self.path} is a partial profile: {len(self.units)} of {len(self.expected_units)} "
                           f"units measured (missing unit {listed}); {fix}, or solve from this part with "
                           "--allow-partial (allow_partial=True)")

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

    def latency(self) -> LatencyTable | None:
        """The latency table stored in the profile file (``mpsearch profile --latency``), or None if it has
        none (never measured)."""
        if self.path is None or not Path(self.path).is_file():
            return None
        try:
            with contextlib.closing(open_current(self.path, readonly=True)) as conn:
                return read_latency(conn, self.path, self.info)
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{self.path} is not a readable mpsearch profile ({e}); profile again") from None

    def block_change(self) -> np.ndarray:
        """(blocks, steps) relative change ||o_t - o_{t-1}||^2 / ||o_t||^2 of each cacheable block; NaN at step 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.block_stats[..., 0] / np.maximum(self.block_stats[..., 1], 1e-30)

    def calibration(self, names=None) -> dict:
        """Layer name -> :class:`mpsearch.quantizers.Calibration` (the calibrated variants' input statistics) of
        the layers in ``names`` (all when None) that have one, read from the file now; {} when none was recorded."""
        if self.path is None:
            return {}
        if self._calibration is None:
            try:
                with contextlib.closing(open_current(self.path, readonly=True)) as conn:
                    self._calibration = read_calibration(conn, self.path, self.info)
            except sqlite3.DatabaseError as e:
                raise ProfileError(f"{self.path} is not a readable mpsearch profile ({e}); profile again") from None
        if names is None:
            return dict(self._calibration)
        return {n: self._calibration[n] for n in names if n in self._calibration}

    def select_formats(self, formats) -> Profile:
        """This profile with only ``formats`` as candidates (fp is always kept), e.g. the round-to-nearest formats
        of a profile that measured variants too; its digest names the selection."""
        keep = ["fp"] + [f for f in formats if f != "fp"]
        missing = [f for f in keep if f not in self.formats]
        if missing:
            raise ProfileError(f"the profile did not measure {', '.join(missing)} (it has {', '.join(self.formats)}); "
                               "profile again with them")
        idx = [self.formats.index(f) for f in keep]
        config = {**self.config, "formats": keep[1:]}
        digest = self.digest + "/" + hashlib.sha256(",".join(keep).encode()).hexdigest()[:8]
        out = dataclasses.replace(self, formats=tuple(keep), stats=self.stats[:, idx], config=config, digest=digest)
        out._calibration = self._calibration
        return out

    @classmethod
    def load(cls, path) -> Profile:
        """Read a profile file (read-only); a missing, corrupt or foreign file is a ProfileError. A file being
        written is read as of its last finished unit."""
        path = Path(path)
        if not path.is_file():
            raise ProfileError(f"profile {path} does not exist; run `mpsearch profile` first (or pass --profile)")
        try:
            # one read transaction: a unit a writer commits meanwhile is not half seen
            with contextlib.closing(open_current(path, readonly=True)) as conn, conn:
                conn.execute("BEGIN")
                return _read(conn, path)
        except sqlite3.DatabaseError as e:
            raise ProfileError(f"{path} is not a readable mpsearch profile ({e}); profile again") from None


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
    meta, info, config = read_meta(conn, path)
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
    shards = _read_shards(conn, path)
    # the latency table is the machine's, the schema version the file's, the model source the folder's: none is in
    # the digest
    digest_meta = {k: v for k, v in meta.items() if k not in (LATENCY_KEY, "schema", MODEL_SOURCE_KEY)}
    source = meta.get(MODEL_SOURCE_KEY)
    if source is not None and (not isinstance(source, str) or not source):
        raise ProfileError(f"{path} has a corrupt {MODEL_SOURCE_KEY} (expected a model name or folder path, got "
                           f"{source!r}); delete it and profile again")
    digest = "sha256:" + hashlib.sha256(stats.tobytes() + (b"" if sens is None else sens.tobytes())
                                        + json.dumps(digest_meta, sort_keys=True).encode()).hexdigest()[:24]
    return Profile(path, info, config, meta.get("versions", {}), formats, steps, units, stats, block_stats, digest,
                   meta.get("weights"), sensitivity=sens, shards=shards, model_source=source)


def _read_shards(conn, path) -> tuple[tuple[int, int], ...]:
    rows = conn.execute("SELECT i, n FROM shards ORDER BY n, i").fetchall()
    if not all(isinstance(i, int) and isinstance(n, int) and 0 <= i < n for i, n in rows):
        raise ProfileError(f"{path} has a corrupt shards table (a shard outside 0 <= i < n); profile again")
    return tuple((int(i), int(n)) for i, n in rows)


def _read_sensitivity(conn, path, units, L: int, S: int) -> np.ndarray | None:
    """(L, S, 2) output-sensitivity sums over ``units``, in unit order; None unless every unit has them."""
    sens = np.zeros((L, S, 2))
    for unit in units:
        rows = np.array(conn.execute("SELECT layer, step, g2, n FROM sensitivity WHERE unit = ? ORDER BY layer, step",
                                     (unit,)).fetchall(), dtype=float).reshape(-1, 4)
        if len(rows) != L * S:
            return None  # a unit written without them (by an mpsearch that did not measure them, then resumed)
        idx = rows[:, :2].astype(np.int64)
        if not ((0 <= idx[:, 0]) & (idx[:, 0] < L) & (0 <= idx[:, 1]) & (idx[:, 1] < S)).all() \
                or not np.isfinite(rows[:, 2:]).all() or (rows[:, 2:] < 0).any():
            raise ProfileError(f"{path} has an output-sensitivity measurement outside its layers/steps or not a "
                               "finite non-negative number; it is corrupt: delete it and profile again")
        sens[idx[:, 0], idx[:, 1]] += rows[:, 2:]
    return sens
