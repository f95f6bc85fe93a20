"""``int4``: weight-only (A16) asymmetric 4-bit with groups of G (128; 64 and 32 as ``int4-g64``/``int4-g32``)
along the input dimension.

Per group (float32): ``mn = min``, ``mx = max``, ``scale = (mx - mn) / 15``, ``zero = mn + 8 * scale``,
``q = clamp(round((x - mn) / scale), 0, 15)`` (round half to even); a constant group (scale 0) gets ``q = 8``.
``scale`` and ``zero`` are then stored as float16 (round to nearest even); a value that overflows float16
is a FormatError. Dequantization is ``(q - 8) * scale16 + zero16`` in float32 from the stored float16 values.

Choice: the codes ``q`` are computed with the float32 ``scale`` and ``mn``, not with the float16 values that
are stored; the codes are therefore those of the exact group grid, and the float16 rounding of scale and
zero is a separate, bounded error (at most ``8 * |scale - scale16| + |zero - zero16|`` per element).

Storage: ``qweight`` uint8 (out, in // 2), two codes per byte (element 2k in the low nibble, 2k+1 in the high
nibble, along the row-major (out, in) order), ``scale`` float16 (out, in // G), ``zero`` float16 (out, in // G).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.base import Format, Packed, check_finite, matrix_shape
from mpsearch.formats.packing import decode_nibbles, pack_nibbles
from mpsearch.formats.registry import register_format

#: the value ``q - 8`` of each code q
_CENTRED = tuple(float(q - 8) for q in range(16))


@register_format
class Int4(Format):
    """Weight-only asymmetric 4-bit with float16 scale and zero per group of ``group`` inputs (see the module)."""

    name = "int4"
    family = "int4"
    group = 128
    variant = False
    bits = 4.0
    quantizes_activations = False

    def why_ineligible(self, shape: Sequence[int]) -> str | None:
        """A reason unless the input dimension is a multiple of the group size."""
        _, inp = matrix_shape(shape)
        if inp % self.group:
            return f"input dim {inp} is not a multiple of the group size {self.group}"
        return None

    def weight_bytes(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
        """Half a byte per element plus a float16 scale and zero per group (``dtype`` does not matter)."""
        self.check_eligible(shape)
        out, inp = matrix_shape(shape)
        return out * inp // 2 + 4 * out * (inp // self.group)

    def quantize(self, w: torch.Tensor) -> Packed:
        """Codes (two per byte), scales and zeros of ``w``; FormatError for NaN/inf, an ineligible shape or
        values beyond float16's range."""
        self.check_eligible(w.shape)
        check_finite(w)
        out, inp = matrix_shape(w.shape)
        g = self.group
        x = w.detach().reshape(out, inp // g, g).to(torch.float32)
        mn, mx = torch.aminmax(x, dim=-1)
        scale = (mx - mn) / 15
        zero = mn + 8 * scale
        scale16, zero16 = scale.to(torch.float16), zero.to(torch.float16)
        if not (torch.isfinite(scale16).all() and torch.isfinite(zero16).all()):
            big = w.detach().abs().max().item()
            raise FormatError(
                f"weight is too large for int4's 16-bit scales (max |value| {big:.4g}, float16 holds up to 65504); "
                f"keep this layer in fp or int8"
            )
        live = scale > 0
        safe = torch.where(live, scale, torch.ones_like(scale))
        q = torch.round((x - mn[..., None]) / safe[..., None]).clamp_(0, 15)
        q = torch.where(live[..., None], q, torch.full_like(q, 8))
        qweight = pack_nibbles(q.to(torch.uint8).reshape(out, inp))
        return Packed(self.name, tuple(w.shape), w.dtype, {"qweight": qweight, "scale": scale16, "zero": zero16})

    def dequantize(self, packed: Packed) -> torch.Tensor:
        """``(q - 8) * scale + zero`` per element, in the original shape and dtype."""
        if packed.format != self.name:
            raise FormatError(f"format {self.name!r} was given a weight packed as {packed.format!r}; use that format")
        out, inp = matrix_shape(packed.shape)
        g = self.group
        q8 = decode_nibbles(packed.tensors["qweight"], _CENTRED).reshape(out, inp // g, g)  # q - 8, exact
        scale = packed.tensors["scale"].to(torch.float32)[..., None]
        zero = packed.tensors["zero"].to(torch.float32)[..., None]
        x = q8.mul_(scale).add_(zero)  # (q - 8) * scale + zero, in place on the decoded codes
        return x.reshape(packed.shape).to(packed.dtype)


@register_format
class Int4G64(Int4):
    """``int4`` with groups of 64."""

    name = "int4-g64"
    group = 64
    variant = True


@register_format
class Int4G32(Int4):
    """``int4`` with groups of 32."""

    name = "int4-g32"
    group = 32
    variant = True
