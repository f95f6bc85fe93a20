"""Two 4-bit codes per byte: element 2k in the low nibble, element 2k+1 in the high nibble."""

from __future__ import annotations

import torch

from mpsearch.errors import FormatError


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes (values 0..15, last dim even) into uint8 of half the last dim, row-major order."""
    if codes.shape[-1] % 2:
        raise FormatError(f"cannot pack 4-bit codes: last dim {codes.shape[-1]} is odd; it must be even")
    c = codes.to(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return c[..., 0] | (c[..., 1] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: uint8 (..., n) -> codes uint8 (..., 2n)."""
    p = packed.to(torch.uint8)
    return torch.stack((p & 0x0F, p >> 4), dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)
