"""Switches the CPU kernels read: a path chosen by measurement (or by the user), and flags set inside a block.

The one user-facing switch is the environment variable ``MPSEARCH_KERNELS`` (:data:`KERNELS_ENV`), parsed by
:func:`parse_kernel_spec`; :func:`mpsearch.runtime.kernels.select_kernels` sets the same from Python."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from mpsearch.errors import UsageError
from mpsearch.formats.kernel_errors import is_unsupported

#: the environment variable that selects the kernel paths (see :mod:`mpsearch.runtime.kernels`)
KERNELS_ENV = "MPSEARCH_KERNELS"
#: its keys and the values each takes (the first is the default)
KERNEL_SWITCHES: dict[str, tuple[str, ...]] = {
    "kernels": ("on", "reference"),      # reference: every call runs the formats' reference arithmetic
    "int8": ("auto", "int_mm", "float"),  # the CPU's INT8 product (mpsearch.runtime.kernels.cpu.int8)
    "nvfp4": ("auto", "bf16", "float"),   # the CPU's NVFP4 W4A4 GEMM (mpsearch.runtime.kernels.cpu.nvfp4)
    "jit": ("on", "off"),                 # numba's loops for the 4-bit formats (mpsearch.runtime.kernels.cpu.loops)
}


def parse_kernel_spec(spec: str, where: str = KERNELS_ENV) -> dict[str, str]:
    """``{key: value}`` of a comma-separated spec such as ``"int8=float,jit=off"`` (keys and values:
    :data:`KERNEL_SWITCHES`; the bare word ``reference`` is ``kernels=reference``); UsageError on anything else."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=") if item != "reference" else ("kernels", "=", "reference")
        key, value = key.strip(), value.strip()
        if not sep or key not in KERNEL_SWITCHES or value not in KERNEL_SWITCHES[key]:
            expected = ", ".join(f"{k}={'|'.join(v)}" for k, v in KERNEL_SWITCHES.items())
            raise UsageError(f"{where}: {item!r} is not a kernel setting; expected comma-separated {expected} "
                             "(or the word reference), e.g. int8=float,jit=off")
        out[key] = value
    return out


def env_kernel_setting(key: str) -> str | None:
    """The value ``MPSEARCH_KERNELS`` gives ``key`` (None: not set there)."""
    return parse_kernel_spec(os.environ.get(KERNELS_ENV, "")).get(key)


@contextlib.contextmanager
def toggled(state: dict, key: str, value):
    """Inside the block ``state[key]`` is ``value``; after it, as it was."""
    old = state[key]
    state[key] = value
    try:
        yield
    finally:
        state[key] = old


def best_time(fn: Callable, n: int = 3) -> float:
    """The best of ``n`` timings of ``fn()`` after one warm-up call, in seconds."""
    fn()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def faster_than(fast: Callable, reference: Callable, factor: float = 1.5) -> bool:
    """Whether ``fast()`` runs at least ``factor`` times faster than ``reference()`` (best of three each); an
    op with no kernel here (:func:`~mpsearch.formats.kernel_errors.is_unsupported`) is not faster; any other
    error, out of memory included, propagates."""
    try:
        t_fast = best_time(fast)
    except RuntimeError as e:  # NotImplementedError included
        if not is_unsupported(e):
            raise
        return False
    return t_fast * factor < best_time(reference)


class PathChoice:
    """A CPU path: ``fast``, ``"float"`` or ``"auto"`` (``measure()`` decides, once per process). Set from
    Python (:func:`mpsearch.runtime.kernels.select_kernels`, which calls :meth:`path`), else by
    ``MPSEARCH_KERNELS``'s entry ``what=...``; ``state`` holds the path set (None: the environment's) and the
    measurement (None until measured)."""

    def __init__(self, what: str, fast: str, measure: Callable[[], bool]):
        self.what, self.fast, self._measure = what, fast, measure
        self.paths = ("auto", fast, "float")
        self.state: dict = {"path": None, "measured": None}

    def path(self, path: str | None = None) -> str:
        """The path in force (``"auto"`` until measured); with an argument, set it (``None``: leave it)."""
        if path is not None:
            if path not in self.paths:
                raise UsageError(f"unknown CPU {self.what} path {path!r}; use one of {', '.join(self.paths)}")
            self.state["path"] = path
        return self.state["path"] or env_kernel_setting(self.what) or "auto"

    def faster(self) -> bool:
        """The measurement (taken on first use)."""
        if self.state["measured"] is None:
            self.state["measured"] = bool(self._measure())
        return self.state["measured"]

    def uses_fast(self) -> bool:
        """Whether calls take the fast path now."""
        path = self.path()  # MPSEARCH_KERNELS's value is checked by parse_kernel_spec
        return path == self.fast or (path == "auto" and self.faster())


__all__ = ["KERNELS_ENV", "KERNEL_SWITCHES", "parse_kernel_spec", "env_kernel_setting", "toggled", "best_time",
           "faster_than", "PathChoice"]
