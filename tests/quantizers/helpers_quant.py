"""Shared fixtures of the quantizer tests: a seeded layer with realistic statistics and bit-exact comparisons."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpsearch.formats import Packed
from mpsearch.quantizers import Calibration, CalibrationAccumulator


def raw(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` (so -0.0, float8 and float16 compare bit for bit)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: Packed, b: Packed) -> bool:
    """Whether two packed weights store the same tensors, bit for bit (and the same format, shape, dtype)."""
    if (a.format, a.shape, a.dtype, list(a.tensors)) != (b.format, b.shape, b.dtype, list(b.tensors)):
        return False
    return all(a.tensors[k].dtype == b.tensors[k].dtype and a.tensors[k].shape == b.tensors[k].shape
               and torch.equal(raw(a.tensors[k]), raw(b.tensors[k])) for k in a.tensors)


def layout(p: Packed) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    return [(k, t.dtype, tuple(t.shape)) for k, t in p.tensors.items()]


def heavy_weight(out: int, inp: int, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed weights (student-t, 3 degrees of freedom), as trained layers have."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(out, inp, generator=g)
    chi = torch.randn(out, inp, 3, generator=g).square().sum(-1)
    return (z / (chi / 3).sqrt() * 0.02).to(torch.float32)


def outlier_inputs(rows: int, inp: int, seed: int = 1, outliers: int = 6, gain: float = 25.0) -> torch.Tensor:
    """Correlated inputs with a few large channels (the activation outliers of transformers)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, inp, generator=g)
    mix = torch.eye(inp) + 0.4 * torch.randn(inp, inp, generator=g) / inp**0.5
    x = z @ mix
    idx = torch.randperm(inp, generator=g)[:outliers]
    x[:, idx] *= gain
    return x


def calibrate(x: torch.Tensor, in_channels: int | None = None, kernel_area: int = 1) -> Calibration:
    acc = CalibrationAccumulator(x.shape[1], in_channels or x.shape[1], kernel_area)
    acc.add(x)
    return acc.result()


def conv_rows(x: torch.Tensor, kernel: int = 3, padding: int = 1) -> torch.Tensor:
    """im2col rows (N*oh*ow, C*k*k) of an NCHW input, columns in the order of weight.reshape(out, -1)."""
    cols = F.unfold(x, kernel, padding=padding)  # (N, C*k*k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])
