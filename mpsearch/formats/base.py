"""The contract every number format follows. Formats are the only place in mpsearch that knows bits."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.patches import im2col


@dataclass(frozen=True)
class Packed:
    """A weight in a format's storage: named tensors, every byte of which counts in ``weight_bytes``.

    ``shape`` and ``dtype`` are those of the original weight (a conv weight keeps its 4-D shape; formats
    treat it as a matrix ``(out, in*kh*kw)``).
    """

    format: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of all the stored tensors: the weight's size in this format."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """``(out, in)`` of a Linear or Conv weight; a conv's input dimension is in_channels*kh*kw."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise FormatError(f"expected a weight of 2 or more dimensions (Linear or Conv), got shape {shape}")
    return shape[0], math.prod(shape[1:])


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite. A sum is non-finite iff some element is, or when finite ones
    overflow it (then the elementwise check decides): a fraction of the time of ``isfinite(t).all()``, which
    writes and reads a mask as large as ``t``."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    return bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


class _WithGradientOf(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return values.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, g


def with_gradient_of(values: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``values`` exactly (bit for bit), with the gradient of ``source`` (same shape): the straight-through
    estimator of quantization-aware training, where ``values`` come from rounding (no gradient) and ``source``
    is the same computation without it."""
    return _WithGradientOf.apply(values.detach(), source)


def records_grad(x: torch.Tensor) -> bool:
    """Whether autograd records a computation on ``x`` here."""
    return torch.is_grad_enabled() and x.requires_grad


def abs_max(x: torch.Tensor) -> torch.Tensor:
    """max |x| over a non-empty tensor, float32 0-d: max(-min, max), exact, without an |x| temporary (``abs``
    so that a tensor of zeros gives +0, as the amax of |x| does)."""
    mn, mx = torch.aminmax(x)
    return torch.maximum(-mn, mx).abs_().to(torch.float32)


def amin_amax(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.aminmax(x, dim=dim)``'s (min, max) as two reductions: on the CPU each is vectorized and
    ``aminmax`` along a dim is not (many times slower at activation sizes). The values are the same (a min or max
    is exact); where +0.0 and -0.0 tie, the sign of the zero returned may differ, so callers take ``abs``."""
    return x.amin(dim=dim), x.amax(dim=dim)


def check_finite(w: torch.Tensor, what: str = "weight") -> None:
    """Raise FormatError (``what`` has N NaN/inf values) unless every element of ``w`` is finite."""
    if not all_finite(w):
        bad = (~torch.isfinite(w)).sum().item()
        raise FormatError(f"{what} has {bad} NaN/inf values; fix the model's weights before quantizing")


class Format(abc.ABC):
    """A number format for weights (and, where it says so, activations).

    Subclasses set ``name`` and implement the abstract methods; ``register_format`` adds them to the
    registry that ``get_format(name)`` reads.
    """

    name: str = ""
    #: nominal bits per weight element (without scales), for display only
    bits: float = 0.0
    #: True when the format quantizes activations at run time (W8A8, W4A4)
    quantizes_activations: bool = False

    def eligible(self, shape: Sequence[int]) -> bool:
        """Whether a weight of this shape can be stored in this format."""
        return self.why_ineligible(shape) is None

    def why_ineligible(self, shape: Sequence[int]) -> str | None:
        """None if eligible, else a short reason (e.g. 'input dim 36 is not a multiple of 16')."""
        matrix_shape(shape)
        return None

    def check_eligible(self, shape: Sequence[int]) -> None:
        """Raise FormatError (naming the format, the shape and the reason) unless ``shape`` is eligible."""
        reason = self.why_ineligible(shape)
        if reason is not None:
            raise FormatError(f"format {self.name!r} cannot take shape {tuple(shape)}: {reason}")

    @abc.abstractmethod
    def weight_bytes(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
        """Exact bytes a weight of ``shape`` takes in this format, scales included."""

    @abc.abstractmethod
    def quantize(self, w: torch.Tensor) -> Packed:
        """Pack ``w``; raises FormatError for NaN/inf or an ineligible shape."""

    @abc.abstractmethod
    def dequantize(self, packed: Packed) -> torch.Tensor:
        """The weight ``packed`` stands for, in its original shape and dtype."""

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(w))``: the weight as the format sees it."""
        return self.dequantize(self.quantize(w))

    def quantize_rows(self, w: torch.Tensor, rows: torch.Tensor) -> Packed:
        """Rows ``rows`` (indices into the output dimension) of ``w``'s matrix ``(out, in)``, packed exactly as
        ``quantize(w)`` packs them; its shape is ``(len(rows), in)``. The default is right for formats whose
        scales are per row or per group within a row; a format with a per-tensor scale overrides it."""
        out, inp = matrix_shape(w.shape)
        return self.quantize(w.detach().reshape(out, inp)[rows])

    def matmul_rows(self, x: torch.Tensor, packed: Packed, *, tensor_amax: torch.Tensor | float | None = None,
                    quantize_activations: bool | None = None, dequantized: torch.Tensor | None = None) -> torch.Tensor:
        """``matmul`` for ``x`` = some rows of a larger activation whose amax is ``tensor_amax``: the same rows
        of the whole product. The default is right for activations quantized per row (or not at all)."""
        return self.matmul(x, packed, quantize_activations=quantize_activations, dequantized=dequantized)

    def quantize_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Activations as this format runs them (fake-quantized along the last dim); identity if A16."""
        return x

    def matmul(self, x: torch.Tensor, packed: Packed, *, quantize_activations: bool | None = None,
               dequantized: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T`` for a 2-D ``x`` of shape (tokens, in), computed the way this format runs.

        The default dequantizes the weight transiently (or uses ``dequantized``, the same weight already
        dequantized, e.g. cached by the profiler); formats with real low-bit kernels override it.
        """
        act = self.quantizes_activations if quantize_activations is None else quantize_activations
        if act:
            x = self.quantize_activation(x)
        w = self.dequantize(packed) if dequantized is None else dequantized
        return x @ w.reshape(w.shape[0], -1).to(x.dtype).t()

    def matmul_patches(self, x: torch.Tensor, packed: Packed, kernel: Sequence[int], dilation: Sequence[int],
                       padding: Sequence[int], stride: Sequence[int], *,
                       quantize_activations: bool | None = None,
                       dequantized: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
        """A conv of the NCHW ``x`` with the packed weight, as ``matmul(im2col(x), packed)``: returns the
        (N*oh*ow, out) rows in (n, oh, ow) order and (oh, ow). Activations are quantized per output pixel
        (per im2col row). Formats may override it with a faster path that computes the same numbers."""
        cols, oh, ow = im2col(x, kernel, dilation, padding, stride)
        y = self.matmul(cols, packed, quantize_activations=quantize_activations, dequantized=dequantized)
        return y, oh, ow
