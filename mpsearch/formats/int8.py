"""``int8``: W8A8. Weights symmetric per output channel, activations dynamic symmetric per token.

Weights: ``scale[o] = amax(|w[o, :]|) / 127`` (float32), ``q = clamp(round(w / scale), -127, 127)`` (int8,
round half to even). An all-zero channel has scale 0 and codes 0. Stored: ``qweight`` int8 (out, in) and
``scale`` float32 (out,); a conv weight is stored as its matrix (out, in*kh*kw).

Activations: per row of the 2-D (tokens, in) activation, ``s_x = amax_row / 127``,
``qx = clamp(round(x / s_x), -127, 127)``. ``matmul`` runs the integer product with ``torch._int_mm`` and
rescales by ``s_x[:, None] * scale[None, :]``. The int32 accumulator is exact for input dims up to 133144
(127*127*133144 < 2^31); above that the product is taken in int64 instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.base import Format, Packed, amin_amax, check_finite, matrix_shape, records_grad, with_gradient_of
from mpsearch.formats.kernel_errors import is_unsupported
from mpsearch.formats.patches import patch_amax, patch_view
from mpsearch.formats.registry import register_format

_QMAX = 127
INT32_SAFE_K = (2**31 - 1) // (_QMAX * _QMAX)


def row_scales(amax: torch.Tensor) -> torch.Tensor:
    """``amax / 127``: the per-row scale of rows whose largest magnitude is ``amax`` (float32)."""
    return amax.to(torch.float32) / _QMAX


def quantize_with_scales(xf: torch.Tensor, scale: torch.Tensor, as_float: bool = False) -> torch.Tensor:
    """int8 codes (float32 holding them if ``as_float``) ``clamp(round(xf / scale), -127, 127)`` of float32
    ``xf`` whose last dims are divided by ``scale`` (broadcast against ``xf``); a row whose scale is 0 (or NaN)
    gets codes 0.

    One division pass that writes a fresh float32 tensor (so ``xf`` may be a strided view, e.g. im2col
    patches, and is copied and divided at once), rounding and clamping in place, then the int8 cast."""
    live = scale > 0
    q = torch.empty(xf.shape, dtype=torch.float32, device=xf.device)  # row-major, whatever xf's strides
    if bool(live.all()):
        torch.div(xf, scale, out=q)
        q.round_().clamp_(-_QMAX, _QMAX)
    else:
        torch.div(xf, torch.where(live, scale, torch.ones_like(scale)), out=q)
        q.round_().clamp_(-_QMAX, _QMAX)
        q = torch.where(live, q, torch.zeros_like(q))
    return q if as_float else q.to(torch.int8)


def quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of a 2-D tensor: (codes int8, scale float32 of shape (rows,))."""
    xf = x2.to(torch.float32)
    if not xf.shape[1] or not xf.shape[0]:
        return torch.zeros(xf.shape, dtype=torch.int8, device=xf.device), torch.zeros(xf.shape[0], device=xf.device)
    mn, mx = amin_amax(xf, 1)  # amax(|x|) = max(-min, max) exactly, without an |x| temporary
    scale = row_scales(torch.maximum(mx, -mn).abs_())
    return quantize_with_scales(xf, scale[:, None]), scale


def rescale(acc: torch.Tensor, sx: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``acc * (sx[:, None] * scale[None, :])`` of an int32/int64 accumulator, in one pass over it
    (the integer-to-float conversion happens inside the multiplication)."""
    return torch.mul(acc, sx[:, None] * scale.to(sx.device)[None, :])


def int8_matmul(qx: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """Exact ``qx @ qw.T`` for int8 qx (m, k) and qw (n, k); int32 result (int64 when k is too large).

    ``torch._int_mm`` where it has a kernel for these shapes on this device; where it has none
    (:func:`~mpsearch.formats.kernel_errors.is_unsupported`) an exact int32 (CPU) or float64 product. Any other
    error of ``torch._int_mm``, out of memory included, propagates."""
    k = qx.shape[1]
    if k > INT32_SAFE_K:
        return qx.to(torch.int64) @ qw.t().to(torch.int64)
    # qw.t() of a (n, 1) weight has strides (1, 1), which torch 2.13's CPU _int_mm misreads (garbage for
    # n > 1); the row-major (1, n) view holds the same values with unambiguous strides.
    b = qw.reshape(1, qw.shape[0]) if k == 1 else qw.t()
    try:
        return torch._int_mm(qx, b)
    except RuntimeError as e:  # NotImplementedError included
        if not is_unsupported(e):  # out of memory, a launch failure, a bug: not a missing kernel
            raise
        if qx.device.type == "cpu":
            return qx.to(torch.int32) @ b.to(torch.int32)
        # integer matmul is not implemented on every accelerator; float64 sums of int8 products are exact
        return (qx.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)


#: float32 sums of int8 x int8 products are exact while every partial sum stays below 2^24 in magnitude,
#: which holds in any summation order for inner dims up to 1040 (1040 * 127 * 127 < 2^24)
_F32_EXACT_K = 2**24 // (_QMAX * _QMAX)


def int8_matmul_f32(qx: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """Exact ``qx @ qw.T`` of int8 codes held in float32 (qx (m, k) float32, qw (n, k) int8 or float32), as
    float32 (each value the exact integer product rounded to float32, as ``int8_matmul(...).to(float32)``).

    The CPU's float GEMM runs the integer product exactly on slices of at most 1040 inputs; slices are
    summed in float64 (exact). On CPUs without VNNI this is many times faster than ``torch._int_mm``."""
    qwf = qw.to(torch.float32)
    k = qx.shape[1]
    if k <= _F32_EXACT_K:
        # + 0.0 turns the -0.0 of an all-zero sum of negative-signed zero products into the integer's +0
        return (qx @ qwf.t()).add_(0.0)
    acc = None
    for lo in range(0, k, _F32_EXACT_K):
        part = qx[:, lo:lo + _F32_EXACT_K] @ qwf[:, lo:lo + _F32_EXACT_K].t()
        acc = part.to(torch.float64) if acc is None else acc.add_(part)
    if k > 2**53 // (_QMAX * _QMAX):  # pragma: no cover - far beyond any layer
        raise FormatError(f"int8 inner dim {k} is too large for an exact product")
    assert acc is not None  # k > _F32_EXACT_K: the loop ran
    return acc.to(torch.float32).add_(0.0)


def _product(qx_float: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """The exact integer product of float-held activation codes and int8 weight codes (float32 or int)."""
    if qx_float.device.type == "cpu":
        return int8_matmul_f32(qx_float, qw)
    return int8_matmul(qx_float.to(torch.int8), qw.to(qx_float.device))


@register_format
class Int8(Format):
    """W8A8: symmetric int8 weights with a float32 scale per output row, activations per token (see the
    module)."""

    name = "int8"
    bits = 8.0
    quantizes_activations = True

    def weight_bytes(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
        """A byte per element plus a float32 scale per row (``dtype`` does not matter)."""
        self.check_eligible(shape)
        out, inp = matrix_shape(shape)
        return out * inp + 4 * out

    def quantize(self, w: torch.Tensor) -> Packed:
        """Codes and row scales of ``w``; FormatError for NaN/inf or an ineligible shape."""
        self.check_eligible(w.shape)
        check_finite(w)
        out, inp = matrix_shape(w.shape)
        q, scale = quantize_rows(w.detach().reshape(out, inp))
        return Packed(self.name, tuple(w.shape), w.dtype, {"qweight": q, "scale": scale})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        """Codes times row scales, in the original shape and dtype."""
        if packed.format != self.name:
            raise FormatError(f"format 'int8' was given a weight packed as {packed.format!r}; use that format")
        q, scale = packed.tensors["qweight"], packed.tensors["scale"]
        w = q.to(torch.float32) * scale[:, None]
        return w.reshape(packed.shape).to(packed.dtype)

    def quantize_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized activation (per token, i.e. per row over the last dim), in x's dtype."""
        x2 = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
        q, s = quantize_rows(x2)
        return (q.to(torch.float32) * s[:, None]).reshape(x.shape).to(x.dtype)

    def matmul(self, x: torch.Tensor, packed: Packed, *, quantize_activations: bool | None = None,
               dequantized: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T`` as W8A8 runs it: per-token int8 activations, the exact integer product, rescaled (with
        the float product's gradient, straight through, when autograd records ``x``)."""
        act = self.quantizes_activations if quantize_activations is None else quantize_activations
        if not act:
            return super().matmul(x, packed, quantize_activations=False, dequantized=dequantized)
        if records_grad(x):  # the integer product has no gradient: the float product's, straight through
            with torch.no_grad():
                y = self.matmul(x, packed, quantize_activations=True)
            return with_gradient_of(y, super().matmul(x, packed, quantize_activations=False, dequantized=dequantized))
        if packed.format != self.name:
            raise FormatError(f"format 'int8' was given a weight packed as {packed.format!r}; use that format")
        qw, scale = packed.tensors["qweight"], packed.tensors["scale"]
        if x.dim() < 1 or x.shape[-1] != qw.shape[1]:
            raise FormatError(
                f"int8 matmul expected an activation whose last dim is {qw.shape[1]}, got shape {tuple(x.shape)}"
            )
        x2 = x.reshape(-1, x.shape[-1])
        xf = x2.to(torch.float32)
        if not xf.numel():
            qx, sx = quantize_rows(x2)
            out = rescale(int8_matmul(qx, qw.to(qx.device)), sx, scale)
            return out.reshape(*x.shape[:-1], qw.shape[0]).to(x.dtype)
        mn, mx = amin_amax(xf, 1)
        sx = row_scales(torch.maximum(mx, -mn).abs_())
        out = rescale(_product(quantize_with_scales(xf, sx[:, None], as_float=True), qw), sx, scale)
        return out.reshape(*x.shape[:-1], qw.shape[0]).to(x.dtype)

    def matmul_patches(self, x: torch.Tensor, packed: Packed, kernel: Sequence[int], dilation: Sequence[int],
                       padding: Sequence[int], stride: Sequence[int], *,
                       quantize_activations: bool | None = None,
                       dequantized: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
        """The conv without a float im2col copy: a patch's amax is the max-pool of the per-pixel channel amax
        (padding zeros count as 0, as in the im2col row), and the int8 patch matrix is written by one
        division pass over the strided patch view. Bit for bit ``matmul(im2col(x), packed)``."""
        act = self.quantizes_activations if quantize_activations is None else quantize_activations
        if not act or x.dim() != 4:
            return super().matmul_patches(x, packed, kernel, dilation, padding, stride,
                                          quantize_activations=act, dequantized=dequantized)
        if records_grad(x):  # as in matmul: the float conv's gradient, straight through
            with torch.no_grad():
                y, oh, ow = self.matmul_patches(x, packed, kernel, dilation, padding, stride)
            ste, _, _ = super().matmul_patches(x, packed, kernel, dilation, padding, stride,
                                               quantize_activations=False, dequantized=dequantized)
            return with_gradient_of(y, ste.to(y.dtype)), oh, ow
        if packed.format != self.name:
            raise FormatError(f"format 'int8' was given a weight packed as {packed.format!r}; use that format")
        qw, scale = packed.tensors["qweight"], packed.tensors["scale"]
        view, xp, oh, ow = patch_view(x.to(torch.float32), kernel, dilation, padding, stride)
        n, _, _, c, kh, kw = view.shape
        if c * kh * kw != qw.shape[1]:
            raise FormatError(f"int8 conv expected {qw.shape[1]} values per patch, got {c}x{kh}x{kw}")
        if not view.numel():
            return super().matmul_patches(x, packed, kernel, dilation, padding, stride,
                                          quantize_activations=act, dequantized=dequantized)
        sx = row_scales(patch_amax(xp, (kh, kw), stride, dilation)).reshape(-1)
        qx = quantize_with_scales(view, sx.view(n, oh, ow, 1, 1, 1), as_float=True).view(n * oh * ow, c * kh * kw)
        out = rescale(_product(qx, qw), sx, scale)
        return out.to(x.dtype), oh, ow
