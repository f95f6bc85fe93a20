"""Read a safetensors file in one sequential pass into fresh memory, checking its digest on the way.

``safetensors.torch.load_file`` maps the whole file: every page it touches counts in the process's memory
until the map goes, so loading N bytes of tensors peaks near 2N on the host, and its CPU tensors are views of
the map, only 8-byte aligned (which changes the CPU GEMV kernels' rounding). :func:`read_tensors` instead
reads each tensor with ``readinto`` straight into a new tensor (moved to the target device one at a time) and
feeds the same bytes to sha256, so the file is read once and never held twice. The file format is
safetensors' own: an 8-byte little-endian header length, a JSON header, then the tensors' bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

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

    ``file_bytes`` and ``digest`` (``sha256_file``'s form) are what the file must be; ``expected`` maps each
    tensor name to ``{"shape": [...], "dtype": "float32"}``. Anything else (a missing, truncated, replaced or
    damaged file) raises ``error`` with a one-line message ending in ``fix``.
    """
    path, device = Path(path), torch.device(device or "cpu")
    what = f"the tensor file {path}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise error(f"{what} is missing; {fix}") from None
    if size != file_bytes:
        raise error(f"{what} has {size:,} bytes where {file_bytes:,} were written; it is truncated or replaced: {fix}")
    h, out = hashlib.sha256(), {}
    with open(path, "rb", buffering=0) as fh:
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
    if "sha256:" + h.hexdigest() != digest:
        raise error(f"{what} does not match its recorded digest (changed or damaged since it was written); {fix}")
    return out


__all__ = ["read_tensors", "sha256_file", "dtype_name", "DTYPES"]
