"""INT8 W8A8 on the CPU through ``torch._int_mm`` (oneDNN's int8 GEMM), on CPUs where it is the faster path.

On a CPU with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX) ``torch._int_mm`` runs several
times faster than a float32 GEMM of the same shape (see docs/benchmarks.md, bench_speed); on a CPU
without them (AVX2 only) it is many times *slower*, and the formats' reference path (the exact integer product on
the float GEMM, ``formats/int8.py``) is the fast one. So the choice is measured, once per process, on the
first INT8 call: :func:`int_mm_is_faster` times both on one shape (one short measurement).
``MPSEARCH_KERNELS=int8=int_mm|float`` (or :func:`mpsearch.runtime.kernels.select_kernels`) fixes it
instead. Both paths are bit for bit the reference: the integer product is exact either way and the activation codes and
the rescale are the same float32 ops.

Convolutions quantize their im2col rows from a channels-last copy of the input, so that the division pass
reads and writes memory in order (the patch's columns ordered (kh, kw, C) instead of the weight's (C, kh,
kw)); the weight's int8 codes are permuted to match per call (a copy of a quarter of the float weight's bytes,
no cached second copy). The integer sums do not depend on the columns' order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpsearch.formats.base import amin_amax
from mpsearch.formats.int8 import INT32_SAFE_K, int8_matmul, quantize_with_scales, rescale, row_scales
from mpsearch.formats.kernel_errors import is_unsupported
from mpsearch.formats.patches import patch_amax
from mpsearch.runtime.kernels import register_kernel
from mpsearch.runtime.kernels.choice import PathChoice, faster_than
from mpsearch.runtime.kernels.cpu.workspace import reusable, rows_per_block, scratch


def _measure() -> bool:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (256, 1024), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (1024, 1024), dtype=torch.int8, generator=g)
    af, bf = a.float(), b.float()
    return faster_than(lambda: torch._int_mm(a, b), lambda: af @ bf)


#: the CPU's INT8 path, ``int8=`` of ``MPSEARCH_KERNELS`` / :func:`mpsearch.runtime.kernels.select_kernels`
_CHOICE = PathChoice("int8", "int_mm", _measure)
_STATE = _CHOICE.state


def int_mm_is_faster() -> bool:
    """Whether ``torch._int_mm`` beats the float32 GEMM by at least 1.5x here (one 256x1024x1024 product each,
    best of three, at the current thread count); measured once per process."""
    return _CHOICE.faster()


def uses_int_mm() -> bool:
    """Whether INT8 calls on the CPU run their product on ``torch._int_mm`` now (``int8=`` of ``MPSEARCH_KERNELS``)."""
    return _CHOICE.uses_fast()


def _product(qx, qw, sx, scale, dtype, resc):
    # formats.int8.int8_matmul: torch._int_mm as the CPU takes it (no padding), exact fallbacks where it cannot
    return resc(int8_matmul(qx, qw), sx, scale).to(dtype)


def _product_into(qx, qw, sx, scale, dtype, resc):
    """``_product`` with the int32 accumulator in the workspace (the same ``torch._int_mm``)."""
    if qw.shape[1] == 1:
        return _product(qx, qw, sx, scale, dtype, resc)  # int8_matmul's (1, n) view of a (n, 1) weight
    acc = scratch("int8_acc", (qx.shape[0], qw.shape[0]), torch.int32, qx.device)
    try:
        torch._int_mm(qx, qw.t(), out=acc)
    except RuntimeError as e:  # NotImplementedError included; out of memory and other failures propagate
        if not is_unsupported(e):
            raise
        return _product(qx, qw, sx, scale, dtype, resc)
    return resc(acc, sx, scale).to(dtype)


def _codes_into(src: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` (int8, ``src``'s shape) = ``quantize_with_scales(src, scale)`` computed in the
    workspace: the division, rounding and clamping of a block of rows at a time in cache, then the int8 cast
    of the block (the reference writes and re-reads a float32 tensor the size of ``src`` in each pass).
    ``src`` (float32, any strides) and ``scale`` (broadcast against it) are cut along their first dim; ``out``
    may be a strided view (the block is written through it from cache)."""
    rows = src.shape[0]
    per_row = src[0].numel() if rows else 1
    step = rows_per_block(per_row)
    tmp = scratch("int8_codes_f32", (min(step, rows), *src.shape[1:]), torch.float32, src.device)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        s = scale[r0:r1] if scale.shape[0] == rows else scale
        t = tmp[:r1 - r0]
        live = s > 0
        if bool(live.all()):
            torch.div(src[r0:r1], s, out=t)
            t.round_().clamp_(-127, 127)
        else:  # as quantize_with_scales: rows whose scale is not > 0 get codes 0
            torch.div(src[r0:r1], torch.where(live, s, torch.ones_like(s)), out=t)
            t.round_().clamp_(-127, 127)
            t = torch.where(live, t, torch.zeros_like(t))
        out[r0:r1].copy_(t)


def _workspace_codes(xf, scale):
    """``quantize_with_scales(xf, scale)`` (int8) into the workspace."""
    qx = scratch("int8_codes", xf.shape, torch.int8, xf.device)
    _codes_into(xf, scale, qx)
    return qx


def linear_int_mm(x2, packed, *, codes=None, resc=rescale):
    """``Int8.matmul`` of a 2-D ``x2`` with the product on ``torch._int_mm``; ``codes(xf, scales)`` and
    ``resc(acc, sx, scale)`` may be fused versions of the reference's (the compiled kernels pass theirs).
    Without ``codes``, the codes and the accumulator live in the :mod:`.workspace` where autograd records
    nothing (else the reference's functions run)."""
    qw = packed.tensors["qweight"]
    if x2.dim() != 2 or x2.shape[1] != qw.shape[1] or not x2.numel() or qw.shape[1] > INT32_SAFE_K:
        return None
    xf = x2.to(torch.float32)
    mn, mx = amin_amax(xf, 1)
    sx = row_scales(torch.maximum(mx, -mn).abs_())
    if codes is None and reusable(x2):
        return _product_into(_workspace_codes(xf, sx[:, None]), qw, sx, packed.tensors["scale"], x2.dtype, resc)
    return _product((codes or quantize_with_scales)(xf, sx[:, None]), qw, sx, packed.tensors["scale"], x2.dtype,
                    resc)


def patches_int_mm(x, packed, kernel, dilation, padding, stride, *, codes=None, resc=rescale):
    """``Int8.matmul_patches`` from a channels-last copy of the input: patch amax = max-pool of the per-pixel
    channel amax, codes by one in-order pass, the product on ``torch._int_mm``; ``(y, oh, ow)`` or None.
    Without ``codes``, the channels-last copy, the codes, the permuted weight codes and the accumulator live
    in the :mod:`.workspace` where autograd records nothing."""
    qw = packed.tensors["qweight"]
    if x.dim() != 4 or qw.shape[1] > INT32_SAFE_K:
        return None
    kh, kw = kernel
    n, c = x.shape[:2]
    if c * kh * kw != qw.shape[1]:
        return None
    into = codes is None and reusable(x)
    xl = x.to(torch.float32).permute(0, 2, 3, 1)  # NHWC view; padded and made contiguous in one copy below
    if into:
        ph, pw = padding
        h, w = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
        buf = scratch("int8_nhwc", (n, h, w, c), torch.float32, x.device)
        if ph or pw:  # the zero border, then the interior
            buf[:, :ph].zero_()
            buf[:, h - ph:].zero_()
            buf[:, :, :pw].zero_()
            buf[:, :, w - pw:].zero_()
        buf[:, ph:h - ph, pw:w - pw].copy_(xl)
        xl = buf
    else:
        xl = F.pad(xl, (0, 0, padding[1], padding[1], padding[0], padding[0])).contiguous() \
            if (padding[0] or padding[1]) else xl.contiguous()
    _, h, w, _ = xl.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if n * oh * ow <= 0 or c == 0:
        return None
    sx = row_scales(patch_amax(xl, (kh, kw), stride, dilation, channel_dim=3)).reshape(-1)
    sn, sh, sw, sc = xl.stride()
    view = xl.as_strided((n, oh, ow, kh, kw, c), (sn, sh * stride[0], sw * stride[1], sh * dilation[0],
                                                   sw * dilation[1], sc))
    if into:
        # codes computed in the input's (kh, kw, C) order (reads in order), each block written into the
        # weight's (C, kh, kw) column order while in cache: the weight's codes are used as stored (permuting
        # them instead costs a copy of every 3x3 conv's weight per call, a visible share of an SD1.5 UNet call)
        qx = scratch("int8_codes", (n * oh, ow, c, kh, kw), torch.int8, x.device)
        qv = qx.permute(0, 1, 3, 4, 2)  # (n * oh, ow, kh, kw, C) view of it
        for b in range(n):  # blocks of output-image rows of one image at a time
            _codes_into(view[b], sx.view(n, oh, ow, 1, 1, 1)[b], qv[b * oh:(b + 1) * oh])
        qx = qx.view(n * oh * ow, c * kh * kw)
        y = _product_into(qx, qw, sx, packed.tensors["scale"], x.dtype, resc)
        return y, oh, ow
    qx = (codes or quantize_with_scales)(view, sx.view(n, oh, ow, 1, 1, 1)).view(n * oh * ow, kh * kw * c)
    qwl = qw.view(qw.shape[0], c, kh, kw).permute(0, 2, 3, 1).reshape(qw.shape[0], -1)  # columns (kh, kw, C)
    y = _product(qx, qwl, sx, packed.tensors["scale"], x.dtype, resc)
    return y, oh, ow


@register_kernel("cpu", "int8", activations=True)
def int8_linear_cpu(x2, packed, *, cache=None, dequantized=None):
    """``Int8.matmul`` with the integer product on ``torch._int_mm`` (None: the reference path is faster)."""
    return linear_int_mm(x2, packed) if uses_int_mm() else None


@register_kernel("cpu", "int8", activations=True, op="patches")
def int8_patches_cpu(x, packed, kernel, dilation, padding, stride, *, cache=None, dequantized=None):
    """The conv with quantized activations on ``torch._int_mm`` (None: the reference path is faster)."""
    return patches_int_mm(x, packed, kernel, dilation, padding, stride) if uses_int_mm() else None


__all__ = ["int_mm_is_faster", "uses_int_mm", "linear_int_mm", "patches_int_mm",
           "int8_linear_cpu", "int8_patches_cpu"]
