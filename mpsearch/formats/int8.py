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

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.base import Format, Packed, check_finite, matrix_shape
from mpsearch.formats.registry import register_format

_QMAX = 127
_INT32_SAFE_K = (2**31 - 1) // (_QMAX * _QMAX)


def quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of a 2-D tensor: (codes int8, scale float32 of shape (rows,))."""
    xf = x2.to(torch.float32)
    scale = xf.abs().amax(dim=1) / _QMAX if xf.shape[1] else torch.zeros(xf.shape[0], device=xf.device)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(xf / safe[:, None]).clamp_(-_QMAX, _QMAX)
    q = torch.where((scale > 0)[:, None], q, torch.zeros_like(q))
    return q.to(torch.int8), scale


def int8_matmul(qx: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """Exact ``qx @ qw.T`` for int8 qx (m, k) and qw (n, k); int32 result (int64 when k is too large)."""
    k = qx.shape[1]
    if k > _INT32_SAFE_K:
        return qx.to(torch.int64) @ qw.t().to(torch.int64)
    # qw.t() of a (n, 1) weight has strides (1, 1), which torch 2.13's CPU _int_mm misreads (garbage for
    # n > 1); the row-major (1, n) view holds the same values with unambiguous strides.
    b = qw.reshape(1, qw.shape[0]) if k == 1 else qw.t()
    try:
        return torch._int_mm(qx, b)
    except (RuntimeError, NotImplementedError):
        if qx.device.type == "cpu":
            return qx.to(torch.int32) @ b.to(torch.int32)
        # integer matmul is not implemented on every accelerator; float64 sums of int8 products are exact
        return (qx.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)


@register_format
class Int8(Format):
    name = "int8"
    bits = 8.0
    quantizes_activations = True

    def weight_bytes(self, shape, dtype: torch.dtype = torch.float32) -> int:
        self.check_eligible(shape)
        out, inp = matrix_shape(shape)
        return out * inp + 4 * out

    def quantize(self, w: torch.Tensor) -> Packed:
        self.check_eligible(w.shape)
        check_finite(w)
        out, inp = matrix_shape(w.shape)
        q, scale = quantize_rows(w.detach().reshape(out, inp))
        return Packed(self.name, tuple(w.shape), w.dtype, {"qweight": q, "scale": scale})

    def dequantize(self, packed: Packed) -> torch.Tensor:
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
        act = self.quantizes_activations if quantize_activations is None else quantize_activations
        if not act:
            return super().matmul(x, packed, quantize_activations=False, dequantized=dequantized)
        if packed.format != self.name:
            raise FormatError(f"format 'int8' was given a weight packed as {packed.format!r}; use that format")
        qw, scale = packed.tensors["qweight"], packed.tensors["scale"]
        if x.dim() < 1 or x.shape[-1] != qw.shape[1]:
            raise FormatError(
                f"int8 matmul expected an activation whose last dim is {qw.shape[1]}, got shape {tuple(x.shape)}"
            )
        x2 = x.reshape(-1, x.shape[-1])
        qx, sx = quantize_rows(x2)
        acc = int8_matmul(qx, qw.to(qx.device))
        out = acc.to(torch.float32) * (sx[:, None] * scale.to(sx.device)[None, :])
        return out.reshape(*x.shape[:-1], qw.shape[0]).to(x.dtype)
