"""A plan's calibration file: the input statistics of the layers it puts in a calibrated variant.

A safetensors file beside the plan (``<plan stem>.calibration.safetensors``), tensors named
``<layer>:x2``, ``<layer>:xmax``, ``<layer>:hessian`` (when recorded) and ``<layer>:rows``; the plan records its
name and BLAKE3 digest, and loading checks both. safetensors holds raw tensors only (no pickle).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from blake3 import blake3
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mpsearch.errors import MpsearchError, PlanError
from mpsearch.io import atomic_write_bytes
from mpsearch.quantizers.calibration import Calibration

SUFFIX = ".calibration.safetensors"


def calibration_path(plan_path: str | os.PathLike[str]) -> Path:
    """Where a plan's calibration file goes: beside it, ``<stem>.calibration.safetensors``."""
    p = Path(plan_path)
    return p.with_name(p.stem + SUFFIX)


def calibration_bytes(calibrations: dict[str, Calibration]) -> bytes:
    """The file's bytes for ``calibrations`` (layer name -> Calibration), deterministic."""
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(calibrations):
        c = calibrations[name]
        tensors[f"{name}:x2"] = c.x2.detach().to(torch.float32).contiguous().cpu()
        tensors[f"{name}:xmax"] = c.xmax.detach().to(torch.float32).contiguous().cpu()
        if c.hessian is not None:
            tensors[f"{name}:hessian"] = c.hessian.detach().to(torch.float32).contiguous().cpu()
        tensors[f"{name}:rows"] = torch.tensor([int(c.rows)], dtype=torch.int64)
    return st_save(tensors, metadata={"format": "mpsearch-calibration"})


def digest(data: bytes) -> str:
    """``"blake3:<hex>"`` of ``data``."""
    return "blake3:" + blake3(data).hexdigest()


def save_calibration(path: str | Path, calibrations: dict[str, Calibration]) -> str:
    """Write the file atomically; returns its digest."""
    data = calibration_bytes(calibrations)
    atomic_write_bytes(path, data)
    return digest(data)


def load_calibration(path: str | Path, expected: str, where: str = "plan") -> dict[str, Calibration]:
    """Read the file the plan names, checking its digest; PlanError naming the problem and the fix."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{where} puts layers in calibrated variants and names its calibration file {path.name}, "
                        f"which is not beside it ({path}); copy it there, or solve again")
    data = path.read_bytes()
    if digest(data) != expected:
        raise PlanError(f"{where}'s calibration file {path} is not the one it was made with (digest differs: "
                        "edited or replaced); copy the original beside the plan, or solve again")
    try:
        tensors = st_load(data)
    except Exception as e:  # a malformed header: safetensors raises its own error types
        raise PlanError(f"{where}'s calibration file {path} is not readable ({e}); solve again") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, part = key.rpartition(":")
        parts.setdefault(name, {})[part] = t
    try:
        return {name: Calibration(x2=p["x2"], xmax=p["xmax"], hessian=p.get("hessian"), rows=int(p["rows"][0]))
                for name, p in parts.items()}
    except (KeyError, ValueError, TypeError, IndexError, MpsearchError) as e:
        raise PlanError(f"{where}'s calibration file {path} is incomplete or invalid ({e}); solve again") from None
