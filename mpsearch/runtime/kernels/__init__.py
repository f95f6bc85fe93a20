"""Kernels per device behind the quantized modules: one registry, chosen at call time from the input's device.

A kernel is registered for ``(device type, format, activations, op)``:

* ``op="linear"``: ``fn(x2, packed, *, cache, dequantized) -> y`` for a 2-D ``x2`` (tokens, in); ``y`` is
  ``(tokens, out)`` as the format's ``matmul`` returns it;
* ``op="patches"``: ``fn(x, packed, kernel, dilation, padding, stride, *, cache, dequantized) -> (y, oh, ow)``,
  the conv with quantized activations, as the format's ``matmul_patches``;
* ``op="conv"``: ``fn(x, packed, bias, stride, padding, dilation, *, cache, dequantized) -> y`` (NCHW), the
  weight-only conv.

``activations`` is whether this call quantizes activations (the plan's per-step windows are resolved before
the call). A call that autograd records (grad mode on, the input requiring grad) runs the reference, which is
differentiable: the rounding passes gradients straight through. A kernel may decline a call by returning
``None`` (a shape, dtype or device it does not take); the format's reference arithmetic in
``mpsearch.formats`` then runs, as it does when nothing is registered. So a CPU kernel is one decorator::

    @register_kernel("cpu", "int8", activations=True)
    def int8_cpu(x2, packed, *, cache, dequantized): ...

``cache`` is the calling module's :class:`LayoutCache` (None outside a module): device layouts a kernel
derives from the packed weight (tinygemm's int4pack, swizzled NVFP4 scales) are built on first use on a device
and kept there, as plain attributes, never as parameters or buffers: the plan's bytes, ``measured_bytes``,
``state_dict`` and the exported checkpoint hold the packed form only (see :mod:`.cuda` for what each layout
costs on the device).

**Where the kernels are.** :mod:`.cpu` (a module per format where the code is one format's: :mod:`.cpu.int8`,
:mod:`.cpu.nvfp4`; :mod:`.cpu.decode` for the 4-bit formats' shared decode; :mod:`.cpu.loops` numba's loops,
:mod:`.cpu.compiled` the ``torch.compile`` kernels, :mod:`.cpu.workspace` their reused memory) and :mod:`.cuda`
(with :mod:`.cuda.layouts`, its weight layouts); :mod:`.choice` parses the switch below.

**Choosing the kernel paths: one switch.** ``MPSEARCH_KERNELS`` (read when this package is imported; from
Python, :func:`select_kernels` with the same text, or :func:`using_kernels` inside a block) takes
comma-separated settings, each with its default:

* ``kernels=on|reference`` (or the word ``reference``): ``reference`` runs every call on the formats'
  reference arithmetic, no kernel at all (as :func:`reference_only` does inside a block);
* ``int8=auto|int_mm|float``: the CPU's INT8 product on ``torch._int_mm`` or on the float GEMM; ``auto``
  measures which is faster, once per process (:mod:`.cpu.int8`). Both are bit for bit the reference;
* ``nvfp4=auto|bf16|float``: the CPU's NVFP4 W4A4 GEMM in bfloat16 (NVFP4 hardware's arithmetic, not bit for
  bit) or float32 (bit for bit); ``auto`` measures (:mod:`.cpu.nvfp4`);
* ``jit=on|off``: numba's one-pass loops for the 4-bit formats, or torch's (:mod:`.cpu.loops`); bit for bit.

E.g. ``MPSEARCH_KERNELS=int8=float,nvfp4=float,jit=off`` (every CPU path bit for bit, nothing measured).
Unset, every path is as it was measured or defaulted. A setting made in Python wins over the environment.
:func:`kernel_settings` says what is in force. The ``torch.compile`` kernels stay opt-in from Python
(``mpsearch.compiled_cpu_kernels()``: they compile on first use and need a compiler).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from mpsearch.errors import FormatError
from mpsearch.formats import Packed, get_format
from mpsearch.formats.base import records_grad
from mpsearch.formats.variant import SEPARATOR, divide_input
from mpsearch.runtime.kernels.choice import (
    env_kernel_setting,
    parse_kernel_spec,
    toggled,
)

OPS = ("linear", "patches", "conv")
KERNELS: dict[tuple[str, str, bool, str], Callable] = {}
_STATE = {"enabled": env_kernel_setting("kernels") != "reference", "cache_layouts": True}


def register_kernel(device: str, formats, *, activations: bool, op: str = "linear"):
    """Decorator: ``fn`` runs ``op`` for weights in ``formats`` (a name or names) on ``device`` (a device type:
    ``"cpu"``, ``"cuda"``) when the call quantizes activations (``activations=True``) or not. The last
    registration for a key wins."""
    if op not in OPS:
        raise FormatError(f"unknown kernel op {op!r}; expected one of {', '.join(OPS)}")
    names = (formats,) if isinstance(formats, str) else tuple(formats)
    for name in names:
        get_format(name)  # an unknown format is an error now, not a kernel that never runs

    def register(fn):
        for name in names:
            KERNELS[(device, name, bool(activations), op)] = fn
        return fn

    return register


def unregister_kernel(device: str, fmt: str, *, activations: bool, op: str = "linear") -> None:
    """Forget the kernel of that key (no error if there is none)."""
    KERNELS.pop((device, fmt, bool(activations), op), None)


def registered() -> list[tuple[str, str, bool, str]]:
    """The registered keys ``(device, format, activations, op)``, sorted."""
    return sorted(KERNELS)


def find_kernel(device: str, fmt: str, activations: bool, op: str = "linear") -> Callable | None:
    """The kernel a call on ``device`` would try first, or None (the format's reference runs)."""
    if not _STATE["enabled"]:
        return None
    return KERNELS.get((device, fmt, bool(activations), op))


def reference_only():
    """Within the block every call runs the formats' reference arithmetic (for comparisons):
    ``using_kernels("reference")``."""
    return using_kernels("reference")


def layouts_per_call():
    """Within the block device layouts are built for each call and not kept (the device then holds exactly
    the packed weights, at the cost of a conversion per call)."""
    return toggled(_STATE, "cache_layouts", False)


class LayoutCache:
    """A module's device layouts, keyed by a name and the device, valid while the packed tensors they came
    from are the same (same storage and version). Plain attributes: invisible to ``parameters()``,
    ``buffers()``, ``state_dict()`` and ``.to()``; the module clears it when it is moved."""

    def __init__(self):
        self._items: dict = {}

    def get(self, name: str, sources, build: Callable):
        sources = tuple(sources)
        device = sources[0].device if sources else None
        stamp = tuple((t.data_ptr(), _version(t), tuple(t.shape)) for t in sources)
        key = (name, str(device))
        hit = self._items.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = build()
        if _STATE["cache_layouts"]:
            self._items[key] = (stamp, value)
        else:
            self._items.pop(key, None)
        return value

    def clear(self) -> None:
        self._items.clear()

    @property
    def nbytes(self) -> int:
        """Bytes the cached layouts hold (tensors, or tuples of tensors)."""
        total = 0
        for _, value in self._items.values():
            for t in (value if isinstance(value, tuple) else (value,)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total

    def __len__(self) -> int:
        return len(self._items)


def _version(t: torch.Tensor) -> int:
    """``t``'s in-place version; inference tensors (made under ``torch.inference_mode``) have none and cannot
    be modified in place outside it, so their storage identifies them."""
    try:
        return t._version
    except RuntimeError as e:
        if "do not track version counter" not in str(e):  # torch: "Inference tensors do not track version counter."
            raise
        return -1


def _cache_or_new(cache):
    return cache if cache is not None else LayoutCache()


def _unwrap(x: torch.Tensor, packed: Packed, channel_dim: int) -> tuple[torch.Tensor, Packed]:
    """A calibrated variant's call as its base format's: ``x`` divided by the smoothing factors (if any) and the
    base format's packed weight, so the base format's kernels run it."""
    if SEPARATOR not in packed.format:
        return x, packed
    fmt = get_format(packed.format)
    s = fmt.smoothing(packed)  # type: ignore[attr-defined]
    if s is not None:
        x = divide_input(x, s, channel_dim=channel_dim)
    return x, fmt.base_packed(packed)  # type: ignore[attr-defined]


def linear(x2: torch.Tensor, packed: Packed, *, activations: bool, dequantized: torch.Tensor | None = None,
           cache: LayoutCache | None = None) -> torch.Tensor:
    """``x2 @ W.T`` (x2 2-D) through the kernel for x2's device, else the format's ``matmul``."""
    x2, packed = _unwrap(x2, packed, -1)
    kernel = None if records_grad(x2) else find_kernel(x2.device.type, packed.format, activations, "linear")
    if kernel is not None:
        y = kernel(x2, packed, cache=_cache_or_new(cache), dequantized=dequantized)
        if y is not None:
            return y
    return get_format(packed.format).matmul(x2, packed, quantize_activations=activations, dequantized=dequantized)


def patches(x: torch.Tensor, packed: Packed, kernel_size, dilation, padding, stride, *, activations: bool,
            dequantized: torch.Tensor | None = None, cache: LayoutCache | None = None):
    """The conv of NCHW ``x`` as patch rows: ``(y (N*oh*ow, out), oh, ow)``, else the format's
    ``matmul_patches``."""
    x, packed = _unwrap(x, packed, 1)
    kernel = None if records_grad(x) else find_kernel(x.device.type, packed.format, activations, "patches")
    if kernel is not None:
        out = kernel(x, packed, kernel_size, dilation, padding, stride, cache=_cache_or_new(cache),
                     dequantized=dequantized)
        if out is not None:
            return out
    return get_format(packed.format).matmul_patches(x, packed, kernel_size, dilation, padding, stride,
                                                    quantize_activations=activations, dequantized=dequantized)


def conv(x: torch.Tensor, packed: Packed, bias, stride, padding, dilation, *,
         dequantized: torch.Tensor | None = None, cache: LayoutCache | None = None) -> torch.Tensor:
    """The weight-only conv (activations as they come): the kernel for x's device, else the dequantized
    weight (or ``dequantized``) in x's dtype through ``F.conv2d``."""
    x, packed = _unwrap(x, packed, 1)
    kernel = None if records_grad(x) else find_kernel(x.device.type, packed.format, False, "conv")
    if kernel is not None:
        y = kernel(x, packed, bias, stride, padding, dilation, cache=_cache_or_new(cache), dequantized=dequantized)
        if y is not None:
            return y
    w = get_format(packed.format).dequantize(packed) if dequantized is None else dequantized
    return F.conv2d(x, w.to(x.dtype), bias, stride, padding, dilation)


# Importing the device packages registers their kernels (they need no device to import).
from mpsearch.runtime.kernels import cuda  # noqa: E402,F401  isort: skip
from mpsearch.runtime.kernels.cpu import int8 as _cpu_int8  # noqa: E402  isort: skip
from mpsearch.runtime.kernels.cpu import loops as _cpu_loops  # noqa: E402  isort: skip
from mpsearch.runtime.kernels.cpu import nvfp4 as _cpu_nvfp4  # noqa: E402  isort: skip


def _switches() -> dict[str, tuple[dict, str]]:
    """Where each setting of ``MPSEARCH_KERNELS`` is held: ``{key: (state dict, its entry)}``."""
    return {"kernels": (_STATE, "enabled"), "int8": (_cpu_int8._STATE, "path"),
            "nvfp4": (_cpu_nvfp4._STATE, "path"), "jit": (_cpu_loops._STATE, "enabled")}


def select_kernels(spec: str) -> dict[str, str]:
    """Set this process's kernel paths from ``spec``, in ``MPSEARCH_KERNELS``'s syntax (e.g.
    ``"int8=float,jit=off"``; see the module docstring); settings it does not name stay. Returns
    :func:`kernel_settings`. UsageError (nothing changed) on an unknown setting."""
    settings = parse_kernel_spec(spec, where="select_kernels")
    for key, value in settings.items():
        if key == "kernels":
            _STATE["enabled"] = value == "on"
        elif key == "int8":
            _cpu_int8._CHOICE.path(value)
        elif key == "nvfp4":
            _cpu_nvfp4._CHOICE.path(value)
        elif key == "jit":
            _cpu_loops._STATE["enabled"] = value == "on"
    return kernel_settings()


@contextlib.contextmanager
def using_kernels(spec: str) -> Iterator[dict[str, str]]:
    """Inside the block the settings ``spec`` names are as :func:`select_kernels` sets them; after it, as
    they were (a setting the environment gave is the environment's again). Yields :func:`kernel_settings`."""
    keys = parse_kernel_spec(spec, where="using_kernels")  # a refused spec raises before anything changes
    held = _switches()
    saved = {key: held[key][0][held[key][1]] for key in keys}
    settings = select_kernels(spec)
    try:
        yield settings
    finally:
        for key, value in saved.items():
            state, entry = held[key]
            state[entry] = value


def kernel_settings() -> dict[str, str]:
    """The kernel paths in force now, as ``MPSEARCH_KERNELS`` names them (``auto`` paths not yet measured)."""
    return {"kernels": "on" if _STATE["enabled"] else "reference", "int8": _cpu_int8._CHOICE.path(),
            "nvfp4": _cpu_nvfp4._CHOICE.path(), "jit": "on" if _cpu_loops._STATE["enabled"] else "off"}


__all__ = ["register_kernel", "unregister_kernel", "registered", "find_kernel", "reference_only",
           "layouts_per_call", "LayoutCache", "linear", "patches", "conv", "OPS", "select_kernels",
           "kernel_settings", "using_kernels"]
