"""``awq``: activation-aware weight scaling for the 4-bit weight formats (int4, nvfp4), as ModelOpt's AWQ-lite.

Notation: W (out, in_cols) float32 = w.reshape(out, -1); a conv's input channel c covers its kernel area's im2col
columns. Per input channel c:

- the activation magnitude ``a_c = sqrt(mean of calib.x2 over c's columns)`` (the RMS of the channel's
  inputs; ModelOpt's AWQ-lite takes the mean of ``|x|``, which the profile does not record: the search over
  alpha below absorbs the difference in scale);
- the weight magnitude ``m_c``: each weight's ``|W_ij|`` divided by the largest ``|W|`` of its scale group
  (an int4 group, an NVFP4 block of 16), averaged over the output rows and c's columns;
- for alpha in :data:`ALPHAS` (0.0, 0.1, ..., 1.0): ``s = clamp(a ** alpha / (m ** (1 - alpha) + tiny), 1e-4,
  1e4)``, then ``s / sqrt(max(s) * min(s))`` (float32; tiny = float32's smallest normal);
- the chosen s minimizes the weight-only output error ``tr(dW H dW^T)``, ``dW = deq(Q(W s)) / s - W`` (per
  column), H = calib.hessian, or ``diag(calib.x2)`` where it was not recorded; the first alpha of the grid
  wins ties.

The codes are the format's round-to-nearest ``fmt.quantize`` of W * s, and the layer runs
``y = Qact(x / s) @ Q(W s)^T`` exactly as ``smooth`` does (the same stored ``smooth`` tensor, 4 bytes per
input channel): NVFP4 quantizes the divided activation, int4 multiplies it unquantized.
"""

from __future__ import annotations

import dataclasses

import torch

from mpsearch.errors import FormatError
from mpsearch.formats import Format, Packed, matrix_shape
from mpsearch.formats.base import all_finite
from mpsearch.formats.variant import expand_factors
from mpsearch.quantizers.calibration import Calibration
from mpsearch.quantizers.codes import group_of

#: ModelOpt's alpha grid (``alpha_step=0.1``), as float32 values 0.0, 0.1, ..., 1.0
ALPHAS = tuple(k / 10 for k in range(11))
S_MIN, S_MAX = 1e-4, 1e4
_TINY = torch.finfo(torch.float32).tiny


def activation_magnitude(calib: Calibration) -> torch.Tensor:
    """float32 (in_channels,): the RMS of each input channel's inputs (over its kernel area's columns)."""
    c = calib.in_channels
    return calib.x2.to(torch.float32).reshape(c, -1).mean(dim=1).sqrt()


def weight_magnitude(fmt: Format, w: torch.Tensor) -> torch.Tensor:
    """float32 (in_channels,): ``|W|`` over its scale group's largest ``|W|``, averaged over rows and the
    channel's columns."""
    out, inp = matrix_shape(w.shape)
    g = group_of(fmt, inp)
    x = w.detach().to(torch.float32).reshape(out, inp // g, g).abs()
    rel = x / (x.amax(dim=-1, keepdim=True) + _TINY)
    return rel.reshape(out, inp).mean(dim=0).reshape(int(w.shape[1]), -1).mean(dim=1)


def awq_factors(a: torch.Tensor, m: torch.Tensor, alpha: float) -> torch.Tensor:
    """float32 (in_channels,) factors for activation magnitudes ``a`` and weight magnitudes ``m``."""
    al = torch.tensor(alpha, dtype=torch.float32)
    s = (a.pow(al) / (m.pow(1 - al) + _TINY)).clamp(S_MIN, S_MAX)
    return s / (s.max() * s.min()).sqrt()


def _error(fmt: Format, w2: torch.Tensor, s_cols: torch.Tensor, calib: Calibration, shape: torch.Size) -> float:
    """``tr(dW H dW^T)`` of the codes of W * s (H = hessian, or diag(x2)), in float64."""
    deq = fmt.dequantize(fmt.quantize((w2 * s_cols[None, :]).reshape(shape))).to(torch.float32)
    dw = (deq.reshape(w2.shape) / s_cols[None, :] - w2).to(torch.float64)
    if calib.hessian is not None:
        h = calib.hessian.to(device=dw.device, dtype=torch.float64)
        return float(((dw @ h) * dw).sum())
    return float((dw.square() * calib.x2.to(device=dw.device, dtype=torch.float64)[None, :]).sum())


def awq_scale(fmt: Format, w: torch.Tensor, calib: Calibration) -> tuple[torch.Tensor, float]:
    """(the factors s, float32 (in_channels,), the alpha that chose them); see the module."""
    out, inp = matrix_shape(w.shape)
    w2 = w.detach().to(torch.float32).reshape(out, inp)
    a = activation_magnitude(calib).to(w2.device)
    m = weight_magnitude(fmt, w).to(w2.device)
    best: tuple[float, torch.Tensor, float] | None = None
    for alpha in ALPHAS:
        s = awq_factors(a, m, alpha)
        s_cols = expand_factors(s, inp)
        if not all_finite(w2 * s_cols[None, :]):
            continue
        try:
            err = _error(fmt, w2, s_cols, calib, w.shape)
        except FormatError:  # W * s beyond what the format's scales hold (int4's float16): not a candidate
            continue
        if best is None or err < best[0]:
            best = (err, s, alpha)
    if best is None:
        raise FormatError("every awq scaling of this weight overflows float32; use round-to-nearest or gptq for "
                          "this layer")
    return best[1], best[2]


def awq_quantize(fmt: Format, w: torch.Tensor, calib: Calibration,
                 rows: torch.Tensor | None = None) -> tuple[Packed, torch.Tensor]:
    """(``fmt.quantize`` of W * s in ``w``'s shape and dtype, s float32 (in_channels,)); see the module. With
    ``rows``: ``fmt.quantize_rows`` of W * s, s chosen on the whole weight."""
    s, _ = awq_scale(fmt, w, calib)
    out, inp = matrix_shape(w.shape)
    ws = (w.detach().to(torch.float32).reshape(out, inp) * expand_factors(s, inp)[None, :]).reshape(w.shape)
    packed = fmt.quantize(ws) if rows is None else fmt.quantize_rows(ws, rows)
    return dataclasses.replace(packed, dtype=w.dtype), s
