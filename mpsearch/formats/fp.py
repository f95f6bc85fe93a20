"""``fp``: the weight kept as it is, in the model's own dtype."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.base import Format, Packed, check_finite
from mpsearch.formats.registry import register_format


@register_format
class FP(Format):
    """Full precision: the weight stored unchanged (every shape is eligible)."""

    name = "fp"
    bits = 16.0  # display only; the real size follows the weight's dtype
    quantizes_activations = False

    def weight_bytes(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
        """The weight's own size: elements x ``dtype``'s item size."""
        self.check_eligible(shape)
        return math.prod(int(s) for s in shape) * dtype.itemsize

    def quantize(self, w: torch.Tensor) -> Packed:
        """``w`` itself (detached) as the packed ``weight``; FormatError for NaN/inf."""
        self.check_eligible(w.shape)
        check_finite(w)
        return Packed(self.name, tuple(w.shape), w.dtype, {"weight": w.detach()})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        """The stored weight, unchanged."""
        if packed.format != self.name:
            raise FormatError(f"format 'fp' was given a weight packed as {packed.format!r}; use that format")
        return packed.tensors["weight"]
