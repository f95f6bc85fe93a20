"""``smooth``: SmoothQuant-style migration of activation outliers into the weights (W8A8 int8, W4A4 nvfp4).

Per input channel c (a Linear's input feature; a conv's input channel, covering its kh*kw im2col columns):

    s_c = xmax_c ** a / wmax_c ** (1 - a),   a = 0.5 (float32),

xmax_c = calib.xmax[c], wmax_c = max |W| over every weight reading channel c (a conv: over out, kh, kw);
s_c = 1 where xmax_c or wmax_c is 0 or s_c is not finite; then s is clamped to [1e-5, 1e5]. The codes are the
format's round-to-nearest ``fmt.quantize`` of W * s (each input channel c's weights multiplied by s_c, float32),
and the layer runs ``y = Qact(x / s) @ Q(W s)^T``: the activation divided by s (per input channel; per im2col
column for a conv, s repeated kh*kw times) before the format's activation quantization. The factors are stored
as float32, 4 bytes per input channel (:func:`smoothed_matmul` is that product for 2-D inputs).

``smooth-gptq`` is the same factors and product with GPTQ's rounding (:mod:`.gptq`, on the RTN scales of W * s)
in place of round-to-nearest, against the second moments of the divided input: ``H_s = H / (s_i s_j)`` (per
column, float64), so the rounding compensates the error of the product the layer runs. Like gptq it needs the
hessian (at most MAX_HESSIAN_COLS input columns).
"""

from __future__ import annotations

import dataclasses

import torch

from mpsearch.errors import FormatError
from mpsearch.formats import Format, Packed, matrix_shape
from mpsearch.formats.base import all_finite
from mpsearch.formats.variant import expand_factors  # noqa: F401  (the smoothing factors per matrix column)
from mpsearch.quantizers.gptq import gptq_quantize

ALPHA = 0.5
S_MIN, S_MAX = 1e-5, 1e5


def smoothing_factors(w: torch.Tensor, xmax: torch.Tensor) -> torch.Tensor:
    """float32 (in_channels,) factors s of ``w`` (out, in_channels, ...) for inputs of per-channel max ``xmax``."""
    out = w.shape[0]
    w3 = w.detach().to(torch.float32).reshape(out, w.shape[1], -1)
    wmax = w3.abs().amax(dim=(0, 2)) if w3.numel() else torch.zeros(w.shape[1], device=w.device)
    xm = xmax.to(device=w3.device, dtype=torch.float32)
    s = torch.pow(xm, ALPHA) / torch.pow(wmax, 1.0 - ALPHA)
    ok = (xm > 0) & (wmax > 0) & torch.isfinite(s)
    s = torch.where(ok, s, torch.ones_like(s))
    return s.clamp_(S_MIN, S_MAX)


def smooth_quantize(fmt: Format, w: torch.Tensor, xmax: torch.Tensor,
                    rows: torch.Tensor | None = None) -> tuple[Packed, torch.Tensor]:
    """(``fmt.quantize`` of W * s in ``w``'s shape and dtype, s float32 (in_channels,)); see the module. With
    ``rows``: ``fmt.quantize_rows`` of W * s (those rows as the whole weight packs them)."""
    s = smoothing_factors(w, xmax)
    out, inp = matrix_shape(w.shape)
    ws = w.detach().to(torch.float32).reshape(out, inp) * expand_factors(s, inp)[None, :]
    if not all_finite(ws):
        raise FormatError(f"the smoothed weight W*s overflows float32 (largest factor {float(s.max()):.3g}); "
                          f"use the clip variant or plain round-to-nearest for this layer")
    packed = fmt.quantize(ws.reshape(w.shape)) if rows is None else fmt.quantize_rows(ws.reshape(w.shape), rows)
    return dataclasses.replace(packed, dtype=w.dtype), s


def smooth_gptq_quantize(fmt: Format, w: torch.Tensor, xmax: torch.Tensor, hessian: torch.Tensor,
                         rows: torch.Tensor | None = None) -> tuple[Packed, torch.Tensor]:
    """(GPTQ's codes of W * s against the divided input's hessian, in ``w``'s shape and dtype; s float32
    (in_channels,)); see the module. With ``rows``: those rows, as :func:`gptq_quantize` takes them."""
    s = smoothing_factors(w, xmax)
    out, inp = matrix_shape(w.shape)
    cols = expand_factors(s, inp)
    ws = w.detach().to(torch.float32).reshape(out, inp) * cols[None, :]
    if not all_finite(ws):
        raise FormatError(f"the smoothed weight W*s overflows float32 (largest factor {float(s.max()):.3g}); "
                          f"use the gptq variant or plain round-to-nearest for this layer")
    c64 = cols.to(device=hessian.device, dtype=torch.float64)
    h = hessian.to(torch.float64) / c64[:, None] / c64[None, :]
    packed = gptq_quantize(fmt, ws.reshape(w.shape), h, rows=rows)
    return dataclasses.replace(packed, dtype=w.dtype), s


def smoothed_matmul(fmt: Format, x2d: torch.Tensor, packed: Packed, s: torch.Tensor) -> torch.Tensor:
    """``fmt.matmul(x2d / s, packed)``: the smoothed layer's product for 2-D rows (tokens, or im2col rows whose
    columns take their channel's factor); s float32 (in_channels,)."""
    return fmt.matmul(x2d / expand_factors(s, x2d.shape[-1]).to(device=x2d.device, dtype=x2d.dtype), packed)
