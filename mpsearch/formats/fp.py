"""``fp``: the weight kept as it is, in the model's own dtype."""

from __future__ import annotations

import math

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.base import Format, Packed, check_finite
from mpsearch.formats.registry import register_format


@register_format
class FP(Format):
    name = "fp"
    bits = 16.0  # display only; the real size follows the weight's dtype
    quantizes_activations = False

    def weight_bytes(self, shape, dtype: torch.dtype = torch.float32) -> int:
        self.check_eligible(shape)
        return math.prod(int(s) for s in shape) * dtype.itemsize

    def quantize(self, w: torch.Tensor) -> Packed:
        self.check_eligible(w.shape)
        check_finite(w)
        return Packed(self.name, tuple(w.shape), w.dtype, {"weight": w.detach()})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        if packed.format != self.name:
            raise FormatError(f"format 'fp' was given a weight packed as {packed.format!r}; use that format")
        return packed.tensors["weight"]
