"""Read a safetensors file in one sequential pass into fresh memory, checking its digest on the way.

``safetensors.torch.load_file`` maps the whole file: every page it touches counts in the process's memory
until the map goes, so loading N bytes of tensors peaks near 2N on the host, and its CPU tensors are views of
the map, only 8-byte aligned (which changes the CPU GEMV kernels' rounding). :func:`read_tensors` instead
reads each tensor with ``readinto`` straight into a new tensor (moved to the target device one at a time) and
feeds the same bytes to its digest (BLAKE3 or SHA-256), so the file is read once and never held twice. The file format
is safetensors' own: an 8-byte little-endian header length, a JSON header, then the tensors' bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import torch
from tqdm.auto import tqdm

from mpsearch.errors import MpsearchError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (how manifests write dtypes)."""
    return str(dtype).removeprefix("torch.")


def sha256_file(path) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _blake3(data: bytes = b"") -> Any:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO)  # SIMD and all cores on large updates


#: the digest schemes a recorded digest ``"<scheme>:<hex>"`` may name
HASHERS: dict[str, Callable[..., Any]] = {"blake3": _blake3, "sha256": hashlib.sha256}


def digest_bytes(data: bytes, scheme: str = "blake3") -> str:
    """``"<scheme>:<hex>"`` of ``data`` (how manifests record a file's digest)."""
    return f"{scheme}:" + HASHERS[scheme](data).hexdigest()


def blake3_file(path) -> str:
    """``"blake3:<hex>"`` of a file's bytes, read in 4 MiB chunks."""
    h = _blake3()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return "blake3:" + h.hexdigest()


def open_regular(path, what: str, error=MpsearchError, fix: str = ""):
    """``path`` opened for unbuffered binary reading, checked to be a regular file (a missing file, a folder or
    a device in its place raises ``error`` naming ``what`` and ``fix``)."""
    try:
        fh = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise error(f"{what} is missing; {fix}") from None
    except IsADirectoryError:
        raise error(f"{what} is a folder where a file was written; {fix}") from None
    except OSError as e:
        raise error(f"cannot read {what} ({e.strerror or e}); {fix}") from None
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise error(f"{what} is not a regular file; {fix}")
    return fh


def _read_exact(fh, buf, what: str, error, fix: str) -> None:
    view, done = memoryview(buf).cast("B"), 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            raise error(f"{what} is truncated (it ends inside its data); {fix}")
        done += n


def read_tensors(path, device=None, *, file_bytes: int, digest: str, expected: dict | None = None,
                 error=MpsearchError, fix: str = "", desc: str = "reading tensors") -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path``, each in fresh memory on ``device`` (default CPU).

    ``file_bytes`` and ``digest`` (``"blake3:<hex>"`` or ``"sha256:<hex>"``) are what the file must be;
    ``expected`` maps each tensor name to ``{"shape": [...], "dtype": "float32"}``. Anything else (a missing,
    truncated, replaced or damaged file, a folder in its place) raises ``error`` with a one-line message ending
    in ``fix``.
    """
    path, device = Path(path), torch.device(device or "cpu")
    what = f"the tensor file {path}"
    scheme = digest.partition(":")[0]
    if scheme not in HASHERS:
        raise error(f"{what} has a recorded digest of unknown kind {scheme!r} (expected one of "
                    f"{', '.join(HASHERS)}); {fix}")
    fh = open_regular(path, what, error, fix)
    h, out = HASHERS[scheme](), {}
    with fh:
        size = os.fstat(fh.fileno()).st_size  # of the file opened, not of whatever the path names later
        if size != file_bytes:
            raise error(f"{what} has {size:,} bytes where {file_bytes:,} were written; it is truncated or "
                        f"replaced: {fix}")
        head = bytearray(8)
        _read_exact(fh, head, what, error, fix)
        header_bytes = bytearray(min(struct.unpack("<Q", head)[0], size))
        _read_exact(fh, header_bytes, what, error, fix)
        h.update(head)
        h.update(header_bytes)
        try:
            header = json.loads(bytes(header_bytes))
            entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                             key=lambda kv: kv[1]["data_offsets"][0])
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise error(f"{what} has a damaged header; {fix}") from None
        if expected is not None and {k for k, _ in entries} != set(expected):
            raise error(f"{what} does not hold the tensors its manifest lists; {fix}")
        pos = 0
        for name, entry in tqdm(entries, desc=desc, unit="tensor", leave=False, disable=None):
            dtype = DTYPES.get(entry.get("dtype"))
            shape = entry.get("shape")
            want = expected[name] if expected is not None else {"shape": shape, "dtype": dtype and dtype_name(dtype)}
            if dtype is None or entry["data_offsets"][0] != pos or shape != want["shape"] \
                    or dtype_name(dtype) != want["dtype"]:
                raise error(f"{what}: tensor {name!r} is not laid out as its manifest says; {fix}")
            t = torch.empty(shape, dtype=dtype)
            if entry["data_offsets"][1] - pos != t.nbytes:
                raise error(f"{what}: tensor {name!r} has the wrong byte count; {fix}")
            if t.numel():
                buf = t.reshape(-1).view(torch.uint8).numpy()
                _read_exact(fh, buf, what, error, fix)
                h.update(buf)
            out[name] = t if device.type == "cpu" else t.to(device)
            pos = entry["data_offsets"][1]
    if f"{scheme}:" + h.hexdigest() != digest:
        raise error(f"{what} does not match its recorded digest (changed or damaged since it was written); {fix}")
    return out


__all__ = ["DTYPES", "HASHERS", "blake3_file", "digest_bytes", "dtype_name", "read_tensors", "sha256_file"]
