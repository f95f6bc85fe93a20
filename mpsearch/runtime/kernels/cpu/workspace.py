"""Scratch memory the CPU kernels reuse from call to call, instead of allocating their temporaries afresh.

A quantized layer's call makes large temporaries: its weight decoded to float32 (59 MB for a 1280-channel
3x3 convolution of SD1.5, 118 MB where the up blocks take 2560 channels), and its im2col patches. Allocations
above glibc's mmap threshold (at most 32 MB) come from ``mmap`` and go back on ``free``, so every call pays a
page fault per 4 KB page on first touch: writing a fresh 59 MB tensor takes several times as long as the same
write into memory touched before. Kept per thread, per slot, grown to the largest request and never shrunk (so
the workspace holds about the largest layer's decoded weight plus its patches: a constant, not the model);
:func:`release_workspace` frees it.

A scratch tensor is valid until the next request of the same slot in the same thread, so a kernel takes one
only for temporaries that die inside its call, and only when autograd records nothing that could keep it
(:func:`reusable`). :func:`workspace_off` turns reuse off (fresh tensors, as before) inside a block.
"""

from __future__ import annotations

import math
import threading

import torch

from mpsearch.formats.base import records_grad
from mpsearch.runtime.kernels.choice import toggled

_LOCAL = threading.local()
_STATE = {"enabled": True}

#: elements per block of rows that a kernel processes at a time: 2 MB of float32, which stays in cache
#: across the block's passes (rounding, clamping, converting) instead of streaming each pass from memory
CHUNK = 1 << 19


def rows_per_block(cols: int) -> int:
    """Rows of ``cols`` elements in one block of about :data:`CHUNK` elements (at least one)."""
    return max(1, CHUNK // max(int(cols), 1))


def _buffers() -> dict:
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = {}
    return bufs


def reusable(*tensors: torch.Tensor) -> bool:
    """Whether temporaries computed from ``tensors`` may live in the workspace: reuse is on and autograd
    records nothing here (grad mode off, or none of ``tensors`` requires grad)."""
    return _STATE["enabled"] and not any(records_grad(t) for t in tensors)


def scratch(slot: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialized contiguous tensor of ``shape`` and ``dtype`` on ``device``, backed by this thread's
    buffer for ``slot`` (grown if too small). Valid until the next ``scratch`` of the same slot here."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if not _STATE["enabled"]:
        return torch.empty(shape, dtype=dtype, device=device)
    bufs = _buffers()
    key = (slot, dtype, str(torch.device(device)))
    buf = bufs.get(key)
    if buf is None or buf.numel() < n:
        bufs.pop(key, None)  # free the smaller one first: the peak is the new size, not both
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buf = bufs[key] = torch.empty(max(n, 1), dtype=dtype, device=device)
    return buf[:n].view(shape)


def workspace_bytes() -> int:
    """Bytes this thread's workspace holds now."""
    return sum(b.numel() * b.element_size() for b in _buffers().values())


def release_workspace() -> None:
    """Free this thread's workspace (it grows again on the next kernel call)."""
    _buffers().clear()


def workspace_off():
    """Inside the block kernels allocate their temporaries afresh (nothing is kept between calls)."""
    return toggled(_STATE, "enabled", False)


__all__ = ["CHUNK", "rows_per_block", "scratch", "reusable", "workspace_bytes", "release_workspace", "workspace_off"]
