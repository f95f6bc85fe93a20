"""The codes of the weight formats as one grid: encode values with GIVEN scales, decode, pack and re-encode.

Every quantized weight format here decodes a code to ``level(code) * step + offset``, per scale group:

- ``int8``: level = the code q (-127..127), step = the row scale, no offset (a group is a whole row);
- ``nvfp4``: level = the signed E2M1 value (sign in bit 3), step = the block's effective scale
  ``float(block_scale) * tensor_scale``, no offset (a group is a block of 16 inputs);
- ``int4``: level = q - 8 (q = 0..15), step = the float16 scale, offset = the float16 zero (a group is G inputs).

Decoding is bit for bit the format's ``dequantize`` (float32). Encoding a value x with a given step/offset takes
the format's own rounding on ``(x - offset) / step``: int8 round half to even, clamp to +-127; int4 round half to
even, clamp to -8..7; nvfp4 nearest E2M1 magnitude, ties to the even code, saturating at 6, sign from x. A group
whose step is 0 gets level 0 (int8 code 0, int4 code 8, nvfp4 magnitude 0 with x's sign). Encoding works in the
dtype of x (float32, or float64 for gptq's loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpsearch.errors import FormatError
from mpsearch.formats import Format, Packed, get_format, matrix_shape
from mpsearch.formats.int4 import Int4
from mpsearch.formats.int8 import Int8
from mpsearch.formats.nvfp4 import BLOCK, NVFP4, SIGNED_GRID, e2m1_codes
from mpsearch.formats.packing import pack_nibbles, unpack_nibbles

_QMAX8 = 127


def kind_of(fmt: Format) -> str:
    """``"int8"``, ``"nvfp4"`` or ``"int4"`` (any group size): the code family of ``fmt``; FormatError otherwise."""
    if isinstance(fmt, Int8):
        return "int8"
    if isinstance(fmt, NVFP4):
        return "nvfp4"
    if isinstance(fmt, Int4):
        return "int4"
    raise FormatError(f"format {fmt.name!r} has no quantizer codes; expected int8, nvfp4 or int4")


def group_of(fmt: Format, in_cols: int) -> int:
    """Inputs per scale group: a whole row for int8, 16 for nvfp4, the group size for int4."""
    if isinstance(fmt, Int4):
        return int(fmt.group)
    return BLOCK if kind_of(fmt) == "nvfp4" else in_cols


@dataclass(frozen=True, eq=False)
class Grid:
    """Per scale group of an (out, in) weight: ``step`` float32 (out, groups), ``offset`` float32 or None."""

    kind: str
    group: int
    step: torch.Tensor
    offset: torch.Tensor | None

    def expanded(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """step and offset repeated per input column: (out, in) tensors of ``dtype``."""
        step = self.step.to(dtype).repeat_interleave(self.group, dim=1)
        off = None if self.offset is None else self.offset.to(dtype).repeat_interleave(self.group, dim=1)
        return step, off


def grid_of(packed: Packed) -> Grid:
    """The grid of ``packed``'s stored scales."""
    fmt = get_format(packed.format)
    kind = kind_of(fmt)
    t = packed.tensors
    group = group_of(fmt, matrix_shape(packed.shape)[1])
    if kind == "int8":
        return Grid(kind, group, t["scale"].to(torch.float32)[:, None], None)
    if kind == "nvfp4":
        eff = t["block_scale"].to(torch.float32) * t["tensor_scale"].to(torch.float32)
        return Grid(kind, group, eff, None)
    return Grid(kind, group, t["scale"].to(torch.float32), t["zero"].to(torch.float32))


def encode(kind: str, x: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """Codes of ``x`` with the given step/offset (broadcast against x): int8 codes for int8, uint8 for the others
    (nvfp4: sign in bit 3; int4: q in 0..15). See the module for the rounding."""
    live = step > 0
    safe = torch.where(live, step, torch.ones_like(step))
    if kind == "int8":
        q = torch.round(x / safe).clamp_(-_QMAX8, _QMAX8)
        return torch.where(live, q, torch.zeros_like(q)).to(torch.int8)
    if kind == "int4":
        y = x - offset if offset is not None else x
        q = torch.round(y / safe).clamp_(-8, 7).add_(8)
        return torch.where(live, q, torch.full_like(q, 8)).to(torch.uint8)
    if kind == "nvfp4":
        mag = e2m1_codes(x.abs() / safe)
        mag = torch.where(live, mag, torch.zeros_like(mag))
        return mag | (torch.signbit(x).to(torch.uint8) << 3)
    raise FormatError(f"unknown code family {kind!r}; expected int8, nvfp4 or int4")


_LUTS: dict[tuple[str, str], torch.Tensor] = {}


def _levels(kind: str, codes: torch.Tensor) -> torch.Tensor:
    """float32 level of each code (exact)."""
    if kind == "int8":
        return codes.to(torch.float32)
    key = (kind, str(codes.device))
    lut = _LUTS.get(key)
    if lut is None:
        values = SIGNED_GRID if kind == "nvfp4" else tuple(float(q - 8) for q in range(16))
        lut = _LUTS[key] = torch.tensor(values, dtype=torch.float32, device=codes.device)
    return lut[codes.to(torch.int64)]


def decode(kind: str, codes: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """float32 ``level(code) * step (+ offset)``, bit for bit the format's dequantization (float32 step/offset)."""
    v = _levels(kind, codes).mul_(step)
    return v if offset is None else v.add_(offset)


def _grouped(grid: Grid, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    out, inp = x.shape
    x3 = x.reshape(out, inp // grid.group, grid.group)
    off = None if grid.offset is None else grid.offset[..., None]
    return x3, grid.step[..., None], off


def encode_grid(grid: Grid, x: torch.Tensor) -> torch.Tensor:
    """Codes (out, in) of the (out, in) ``x`` on ``grid``'s scales."""
    x3, step, off = _grouped(grid, x)
    return encode(grid.kind, x3, step, off).reshape(x.shape)


def decode_grid(grid: Grid, codes: torch.Tensor) -> torch.Tensor:
    """float32 (out, in) values of the (out, in) ``codes`` on ``grid``'s scales."""
    c3, step, off = _grouped(grid, codes)
    return decode(grid.kind, c3, step, off).reshape(codes.shape)


def unpack_codes(packed: Packed) -> torch.Tensor:
    """The (out, in) codes of ``packed`` (int8 for int8, uint8 otherwise)."""
    q = packed.tensors["qweight"]
    return q if kind_of(get_format(packed.format)) == "int8" else unpack_nibbles(q)


def pack_codes(fmt: Format, codes: torch.Tensor, scales: dict[str, torch.Tensor], shape: tuple[int, ...],
               dtype: torch.dtype) -> Packed:
    """A Packed of ``fmt`` from (out, in) codes and the scale tensors, in the key order ``fmt.quantize`` uses."""
    qweight = codes.to(torch.int8) if kind_of(fmt) == "int8" else pack_nibbles(codes)
    return Packed(fmt.name, tuple(shape), dtype, {"qweight": qweight, **scales})


def scale_tensors(packed: Packed) -> dict[str, torch.Tensor]:
    """The stored tensors of ``packed`` other than its codes."""
    return {k: v for k, v in packed.tensors.items() if k != "qweight"}


def reencode(packed: Packed) -> Packed:
    """``fmt.dequantize(packed)`` encoded again with ``packed``'s own scales: the same codes, bit for bit, when
    every code of ``packed`` is a valid code of its format (and the weight's dtype holds the decoded float32
    values, e.g. float32). The tests' check that a quantizer wrote valid codes."""
    fmt = get_format(packed.format)
    out, inp = matrix_shape(packed.shape)
    values = fmt.dequantize(packed).to(torch.float32).reshape(out, inp)
    codes = encode_grid(grid_of(packed), values)
    return pack_codes(fmt, codes, scale_tensors(packed), packed.shape, packed.dtype)
