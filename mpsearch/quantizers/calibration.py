"""TEMPORARY stand-in (replaced by the quant branch's module at merge)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_HESSIAN_COLS = 2304


@dataclass(frozen=True)
class Calibration:
    x2: torch.Tensor
    xmax: torch.Tensor
    hessian: torch.Tensor | None
    rows: int


class CalibrationAccumulator:
    def __init__(self, in_cols: int, in_channels: int, kernel_area: int = 1, hessian: bool = True):
        self.in_cols, self.in_channels, self.area = in_cols, in_channels, kernel_area
        self.x2 = torch.zeros(in_cols, dtype=torch.float64)
        self.xmax = torch.zeros(in_channels, dtype=torch.float32)
        self.h = torch.zeros(in_cols, in_cols, dtype=torch.float64) if hessian else None
        self.n = 0

    def add(self, rows: torch.Tensor) -> None:
        r = rows.detach().to(torch.float64)
        self.x2 += r.square().sum(0)
        self.xmax = torch.maximum(self.xmax, r.abs().amax(0).reshape(self.in_channels, self.area).amax(1).float())
        if self.h is not None:
            self.h += r.t() @ r
        self.n += r.shape[0]

    def result(self) -> Calibration:
        n = max(self.n, 1)
        return Calibration((self.x2 / n).float(), self.xmax.clone(),
                           None if self.h is None else (self.h / n).float(), self.n)
