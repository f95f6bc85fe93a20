"""The ``calibration`` table: each layer's input statistics for the calibrated quantizer variants.

One row per (layer index, key): ``x2``, ``xmax``, ``hessian`` (when recorded) as raw little-endian float32 bytes
with their shape, and ``rows`` (int64). Written once per file, before its first unit; read on demand (the
hessians of a real-size model are hundreds of MB, which :meth:`Profile.load` does not read).
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import torch
from blake3 import blake3

from mpsearch.errors import MpsearchError, ProfileError
from mpsearch.models import ModelInfo
from mpsearch.quantizers import Calibration

#: meta key: the BLAKE3 digest of the calibration rows (so the profile's digest covers them)
CALIBRATION_KEY = "calibration"
_DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}


def _rows(calibrations: dict[int, Calibration]) -> list[tuple[int, str, str, str, bytes]]:
    out = []
    for li in sorted(calibrations):
        c = calibrations[li]
        parts = {"x2": c.x2, "xmax": c.xmax, "hessian": c.hessian}
        for key, t in parts.items():
            if t is None:
                continue
            a = t.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4", copy=False)
            out.append((li, key, "float32", json.dumps(list(a.shape)), a.tobytes()))
        out.append((li, "rows", "int64", "[]", np.asarray(int(c.rows), dtype="<i8").tobytes()))
    return out


def calibration_digest(rows) -> str:
    """BLAKE3 of the rows in (layer, key) order."""
    h = blake3()
    for li, key, dtype, shape, data in sorted(rows, key=lambda r: (r[0], r[1])):
        h.update(f"{li}\0{key}\0{dtype}\0{shape}\0{len(data)}\0".encode())
        h.update(data)
    return "blake3:" + h.hexdigest()[:32]


def write_calibration(conn: sqlite3.Connection, calibrations: dict[int, Calibration]) -> str:
    """Insert the calibration of every layer index in ``calibrations`` and its digest in meta (inside the
    caller's transaction); returns the digest."""
    rows = _rows(calibrations)
    conn.executemany("INSERT OR REPLACE INTO calibration VALUES (?, ?, ?, ?, ?)", rows)
    digest = calibration_digest(rows)
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (CALIBRATION_KEY, json.dumps(digest)))
    return digest


def has_calibration(conn: sqlite3.Connection) -> bool:
    """Whether the open file holds calibration rows."""
    return conn.execute("SELECT 1 FROM calibration LIMIT 1").fetchone() is not None


def read_calibration(conn: sqlite3.Connection, path, info: ModelInfo,
                     names=None) -> dict[str, Calibration]:
    """Layer name -> Calibration of the layers in ``names`` (all when None) that have one."""
    index = {l.name: i for i, l in enumerate(info.layers)}
    wanted = None if names is None else {index[n] for n in names if n in index}
    found: dict[int, dict] = {}
    for li, key, dtype, shape, data in conn.execute("SELECT layer, key, dtype, shape, data FROM calibration"):
        if wanted is not None and li not in wanted:
            continue
        try:
            dims = json.loads(shape)
            if not (isinstance(li, int) and 0 <= li < len(info.layers)) or dtype not in _DTYPES or \
                    not isinstance(data, bytes) or not all(isinstance(d, int) and d >= 0 for d in dims):
                raise ValueError(key)
            a = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(dims).copy()
        except (ValueError, TypeError, json.JSONDecodeError):
            raise ProfileError(f"{path} has a corrupt calibration row (layer {li!r}, {key!r}); delete it and "
                               "profile again") from None
        found.setdefault(li, {})[key] = a
    out = {}
    for li, parts in found.items():
        try:
            out[info.layers[li].name] = Calibration(
                x2=torch.from_numpy(parts["x2"]), xmax=torch.from_numpy(parts["xmax"]),
                hessian=torch.from_numpy(parts["hessian"]) if "hessian" in parts else None,
                rows=int(parts["rows"]))
        except (KeyError, ValueError, TypeError, MpsearchError) as e:
            raise ProfileError(f"{path} has an incomplete or invalid calibration for layer "
                               f"{info.layers[li].name!r} ({e}); delete it and profile again") from None
    return out
