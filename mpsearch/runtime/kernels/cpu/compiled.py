"""Optional CPU kernels through ``torch.compile`` (inductor): the element-wise quantization steps in fused loops.

On a CPU without FP4/INT4 matrix units the 4-bit formats run as dequantized weights (and, for NVFP4,
fake-quantized activations) through fp32 GEMMs. In eager mode each of those element-wise steps is a pass over
memory: NVFP4's activation rounding takes about half a GEMM's time at SD1.5 size. Compiled, each becomes one
fused loop, bit for bit the formats' reference arithmetic (``tests/runtime/test_compiled_kernels.py``).
INT8, where it runs on ``torch._int_mm`` (:mod:`.int8`), gets its activation codes (division, rounding,
clamp and the int8 cast: four passes in eager mode, a fifth of a call's time) and its rescale as one loop each.

Where numba's loops run (:mod:`.loops`, the default) the 4-bit formats take those instead: one native
pass each, faster than these; INT8 keeps its compiled loops.

Off by default: the first call of each shape family compiles (slow on a small CPU) and needs a C++
compiler. Turn it on with :func:`compiled_cpu_kernels` (a function and a context manager).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpsearch.errors import UsageError
from mpsearch.formats import get_format
from mpsearch.formats.int4 import Int4
from mpsearch.formats.nvfp4 import BLOCK, nvfp4_decode_packed, nvfp4_fake_quantize
from mpsearch.formats.patches import im2col
from mpsearch.formats.registry import available_formats
from mpsearch.runtime.kernels import KERNELS, register_kernel, unregister_kernel
from mpsearch.runtime.kernels.cpu import loops
from mpsearch.runtime.kernels.cpu.int8 import linear_int_mm, patches_int_mm, uses_int_mm
from mpsearch.runtime.kernels.cpu.nvfp4 import nvfp4_linear_bf16, nvfp4_patches_bf16, uses_bf16

_COMPILED: dict = {}
_ON = {"enabled": False}


def _compiled(fn):
    c = _COMPILED.get(fn)
    if c is None:
        compiled = torch.compile(fn, dynamic=True)

        def c(*args):
            try:
                return compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as e:
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise UsageError(f"the compiled CPU kernels could not be compiled ({first}); install a C++ "
                                 "compiler (gcc) or turn them off with mpsearch.compiled_cpu_kernels(False)") from None
        _COMPILED[fn] = c
    return c


def _int4_dequant(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """``Int4.dequantize`` (float32) as one loop: ``(q - 8) * scale + zero`` per group."""
    lo = (qweight & 0x0F).to(torch.float32) - 8.0
    hi = (qweight >> 4).to(torch.float32) - 8.0
    q8 = torch.stack((lo, hi), dim=-1).reshape(qweight.shape[0], -1, group)
    return (q8 * scale.to(torch.float32)[..., None] + zero.to(torch.float32)[..., None]).reshape(qweight.shape[0], -1)


def _dequantized(packed) -> torch.Tensor:
    """``format.dequantize(packed)`` (its shape and dtype), decoded by a compiled loop."""
    t = packed.tensors
    if packed.format == "nvfp4":
        w = _compiled(nvfp4_decode_packed)(t["qweight"], t["block_scale"], t["tensor_scale"])
    else:
        w = _compiled(_int4_dequant)(t["qweight"], t["scale"], t["zero"], get_format(packed.format).group)
    return w.reshape(packed.shape).to(packed.dtype)


def _weight(packed, dequantized, dtype) -> torch.Tensor:
    """The (out, in) weight matrix in ``dtype``: ``dequantized`` if given, else decoded."""
    w = _dequantized(packed) if dequantized is None else dequantized
    return w.reshape(w.shape[0], -1).to(dtype)


def _activations(x2: torch.Tensor) -> torch.Tensor:
    return _compiled(nvfp4_fake_quantize)(x2).to(x2.dtype)


def _linear(activations: bool):
    def kernel(x2, packed, *, cache, dequantized):
        if activations and x2.shape[-1] % BLOCK:
            return None  # the reference raises its own error
        if activations and packed.format == "nvfp4" and uses_bf16():  # NVFP4 hardware's arithmetic is faster
            return nvfp4_linear_bf16(x2, packed, cache=cache, dequantized=dequantized)
        x = _activations(x2) if activations else x2
        return x @ _weight(packed, dequantized, x2.dtype).t()
    return kernel


def _patches(x, packed, kernel_size, dilation, padding, stride, *, cache, dequantized):
    if uses_bf16():
        return nvfp4_patches_bf16(x, packed, kernel_size, dilation, padding, stride, cache=cache,
                                  dequantized=dequantized)
    cols, oh, ow = im2col(x, kernel_size, dilation, padding, stride)
    if cols.shape[-1] % BLOCK:
        return None
    return _activations(cols) @ _weight(packed, dequantized, cols.dtype).t(), oh, ow


def _conv(x, packed, bias, stride, padding, dilation, *, cache, dequantized):
    w = _dequantized(packed) if dequantized is None else dequantized
    return F.conv2d(x, w.to(x.dtype), bias, stride, padding, dilation)


def _int8_codes(xf: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``formats.int8.quantize_with_scales`` (int8 codes, 0 where the scale is not > 0) as one loop."""
    live = scale > 0
    q = torch.clamp(torch.round(xf / torch.where(live, scale, torch.ones_like(scale))), -127, 127)
    return torch.where(live, q, torch.zeros_like(q)).to(torch.int8).contiguous()  # rows as the GEMM reads them


def _int8_rescale(acc: torch.Tensor, sx: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``formats.int8.rescale`` as one loop."""
    return acc * (sx[:, None] * scale[None, :])


def _int8_linear(x2, packed, *, cache, dequantized):
    if not uses_int_mm():  # the float GEMM path is faster here: the reference
        return None
    return linear_int_mm(x2, packed, codes=_compiled(_int8_codes), resc=_compiled(_int8_rescale))


def _int8_patches(x, packed, kernel_size, dilation, padding, stride, *, cache, dequantized):
    if not uses_int_mm():
        return None
    return patches_int_mm(x, packed, kernel_size, dilation, padding, stride, codes=_compiled(_int8_codes),
                          resc=_compiled(_int8_rescale))


def _keys():
    int4s = [n for n in available_formats(variants=True) if isinstance(get_format(n), Int4)]
    keys = [("nvfp4", True, "linear", _linear(True)), ("nvfp4", False, "linear", _linear(False)),
            ("nvfp4", True, "patches", _patches)]
    for name in ("nvfp4", *int4s):
        keys.append((name, False, "conv", _conv))
    keys += [(name, False, "linear", _linear(False)) for name in int4s]
    keys += [("int8", True, "linear", _int8_linear), ("int8", True, "patches", _int8_patches)]
    return keys


class compiled_cpu_kernels:
    """``compiled_cpu_kernels()`` turns the compiled CPU kernels on (``compiled_cpu_kernels(False)``: off);
    ``with compiled_cpu_kernels(): ...`` turns them on inside the block only."""

    def __init__(self, enable: bool = True):
        self._before = _ON["enabled"]
        _set(bool(enable))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _set(self._before)


_REPLACED: dict = {}  # the kernels the compiled ones stand in for (int8's _int_mm kernels), put back when off


def _prefer_jit(compiled, eager):
    """``compiled``, except where the numba loops run (:mod:`.loops`): they fuse the 4-bit steps too, faster,
    so ``eager`` (the kernel that uses them) runs then."""
    def kernel(*args, **kwargs):
        if eager is not None and loops.jit_enabled():
            return eager(*args, **kwargs)
        return compiled(*args, **kwargs)
    return kernel


def _set(enable: bool) -> None:
    if enable == _ON["enabled"]:
        return
    for name, act, op, fn in _keys():
        key = ("cpu", name, act, op)
        if enable:
            _REPLACED[key] = KERNELS.get(key)
            if name != "int8":
                fn = _prefer_jit(fn, _REPLACED[key])
            register_kernel("cpu", name, activations=act, op=op)(fn)
        elif _REPLACED.get(key) is not None:
            register_kernel("cpu", name, activations=act, op=op)(_REPLACED.pop(key))
        else:
            unregister_kernel("cpu", name, activations=act, op=op)
    _ON["enabled"] = enable


__all__ = ["compiled_cpu_kernels"]
