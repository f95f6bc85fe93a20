"""Calibration statistics of one layer's inputs, as its matrix product sees them.

Rows are the 2-D activation the layer multiplies by ``W.T``: tokens for a Linear, im2col rows for a conv (one
row per output pixel, columns in the order of ``weight.reshape(out, -1)``: column ``c*kh*kw + k`` belongs to
input channel ``c``). Over the recorded rows x:

- ``x2[j]`` = mean of ``x_j**2`` (the diagonal of the input second moment; the clip variant's weights);
- ``xmax[c]`` = max ``|x|`` over the rows and over the kernel_area columns of input channel ``c`` (smooth);
- ``hessian`` = mean of ``x x^T`` (gptq), recorded only up to :data:`MAX_HESSIAN_COLS` columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.variant import MAX_HESSIAN_COLS as _MAX_HESSIAN_COLS

#: the largest in_cols whose hessian is recorded (defined with the variants' eligibility, gptq's shape rule).
#: Memory: the accumulator holds an (in_cols, in_cols) float64 sum and the result a float32 copy, 12 bytes per
#: entry: 64 MB at 2304 columns per layer being calibrated, while a 5120-column layer (an SD 1.5 feed-forward
#: output) would take 315 MB and FLUX's 12288 columns 1.8 GB each.
MAX_HESSIAN_COLS = _MAX_HESSIAN_COLS

#: rows converted to float64 at a time (bounds the temporary of one ``add``)
_CHUNK_ROWS = 8192


def _check_vector(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.float32:
        got = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise FormatError(f"Calibration.{name} must be a 1-D float32 tensor, got {got}; build it with "
                          f"CalibrationAccumulator")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise FormatError(f"Calibration.{name} must be finite and non-negative; recalibrate from finite inputs")
    return t


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no boolean ==; a Calibration is compared by identity
class Calibration:
    """Statistics of one layer's inputs, as the matrix product sees them (rows = tokens, or a conv's im2col rows).

    x2: float32 (in_cols,) mean of x_j**2 over the recorded rows (in_cols = in_features, or in_ch*kh*kw for a
        conv, im2col column order = weight.reshape(out, -1) column order)
    xmax: float32 (in_channels,) max |x| per INPUT CHANNEL (Linear: = in_features; Conv2d: in_channels)
    hessian: float32 (in_cols, in_cols) mean of x x^T over rows, or None (not recorded: too large)
    rows: int, how many rows were accumulated (>= 1)
    """

    x2: torch.Tensor
    xmax: torch.Tensor
    hessian: torch.Tensor | None
    rows: int

    def __post_init__(self) -> None:
        _check_vector("x2", self.x2)
        _check_vector("xmax", self.xmax)
        n, c = self.x2.shape[0], self.xmax.shape[0]
        if n == 0 or c == 0 or n % c:
            raise FormatError(f"Calibration has {n} input columns and {c} input channels; expected at least one "
                              f"channel and columns = channels x kernel area; recalibrate the layer")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise FormatError(f"Calibration.rows must be an int >= 1, got {self.rows!r}; add rows before result()")
        h = self.hessian
        if h is None:
            return
        if not isinstance(h, torch.Tensor) or h.dtype != torch.float32 or tuple(h.shape) != (n, n):
            got = f"{h.dtype} tensor of shape {tuple(h.shape)}" if isinstance(h, torch.Tensor) else type(h).__name__
            raise FormatError(f"Calibration.hessian must be a float32 ({n}, {n}) tensor (in_cols x in_cols) or "
                              f"None, got {got}; recalibrate the layer")
        if not bool(torch.isfinite(h).all()):
            raise FormatError("Calibration.hessian has NaN/inf values; recalibrate from finite inputs")

    @property
    def in_cols(self) -> int:
        """Columns of the layer's matrix product (in_features, or in_channels*kh*kw)."""
        return int(self.x2.shape[0])

    @property
    def in_channels(self) -> int:
        """Input channels (in_features for a Linear)."""
        return int(self.xmax.shape[0])


class CalibrationAccumulator:
    """Accumulates Calibration from 2-D input rows (float32/64 sums internally, float64 for the hessian sum).

    ``kernel_area`` (kh*kw of a conv, 1 for a Linear) maps im2col columns to channels: ``in_cols`` must be
    ``in_channels * kernel_area``. The hessian is recorded when ``hessian`` is true and ``in_cols`` is at most
    :data:`MAX_HESSIAN_COLS` (``records_hessian`` says which).
    """

    def __init__(self, in_cols: int, in_channels: int, kernel_area: int = 1, hessian: bool = True) -> None:
        if min(in_cols, in_channels, kernel_area) < 1 or in_cols != in_channels * kernel_area:
            raise FormatError(f"calibration of {in_cols} columns from {in_channels} channels x kernel area "
                              f"{kernel_area}: expected positive sizes with in_cols = in_channels * kernel_area")
        self.in_cols, self.in_channels, self.kernel_area = int(in_cols), int(in_channels), int(kernel_area)
        self.records_hessian = bool(hessian) and self.in_cols <= MAX_HESSIAN_COLS
        self.rows = 0
        self._x2: torch.Tensor | None = None
        self._xmax: torch.Tensor | None = None
        self._h: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        """Accumulate ``rows`` (n, in_cols), any float dtype; FormatError for another shape or NaN/inf values."""
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != self.in_cols:
            got = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise FormatError(f"calibration rows must be 2-D (n, {self.in_cols}), got {got}; pass the layer's "
                              f"input as (tokens, in_features) or im2col rows")
        if not rows.is_floating_point() or not bool(torch.isfinite(rows).all()):
            raise FormatError("calibration rows must be finite floats; the layer's input has NaN/inf (or is not "
                              "floating point): calibrate on a run that produces finite activations")
        if rows.shape[0] == 0:
            return
        rows = rows.detach()  # statistics, never part of an autograd graph
        dev = rows.device
        if self._x2 is None:
            self._x2 = torch.zeros(self.in_cols, dtype=torch.float64, device=dev)
            self._xmax = torch.zeros(self.in_channels, dtype=torch.float32, device=dev)
            if self.records_hessian:
                self._h = torch.zeros(self.in_cols, self.in_cols, dtype=torch.float64, device=dev)
        assert self._xmax is not None
        for lo in range(0, rows.shape[0], _CHUNK_ROWS):
            x = rows[lo:lo + _CHUNK_ROWS].to(device=self._x2.device, dtype=torch.float64)
            self._x2 += (x * x).sum(dim=0)
            cmax = x.abs().amax(dim=0).reshape(self.in_channels, self.kernel_area).amax(dim=1)
            torch.maximum(self._xmax, cmax.to(torch.float32), out=self._xmax)
            if self._h is not None:
                self._h += x.t() @ x
        self.rows += int(rows.shape[0])

    def result(self) -> Calibration:
        """The means so far as float32 tensors; FormatError if no rows were added."""
        if self._x2 is None or self._xmax is None or self.rows == 0:
            raise FormatError("no calibration rows were added; run the layer on calibration inputs before result()")
        hessian = None
        if self._h is not None:
            # the matrix product's two triangles may differ in the last bit: average them so H is exactly symmetric
            hessian = ((self._h + self._h.t()) * (0.5 / self.rows)).to(torch.float32)
        x2 = (self._x2 / self.rows).to(torch.float32)
        return Calibration(x2=x2, xmax=self._xmax.clone(), hessian=hessian, rows=self.rows)
