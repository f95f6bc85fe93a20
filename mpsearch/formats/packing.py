"""Two 4-bit codes per byte: element 2k in the low nibble, element 2k+1 in the high nibble."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpsearch.errors import FormatError

_tables: dict = {}


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


def decode_nibbles(packed: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    """float32 ``values[code]`` of every code in ``packed`` (uint8 (..., n) -> (..., 2n)), in one gather: each
    byte indexes a 256 x 2 table of its two nibbles' values (so the codes are never unpacked on their own).
    Bit for bit ``torch.tensor(values)[unpack_nibbles(packed).long()]``."""
    if len(values) != 16:
        raise FormatError(f"decode_nibbles needs a value for each of the 16 codes, got {len(values)}")
    out = F.embedding(packed.to(torch.int32), pair_table(values, packed.device))  # (..., n, 2)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def pair_table(values: tuple[float, ...], device: torch.device | str) -> torch.Tensor:
    """float32 (256, 2): row b holds ``(values[b & 15], values[b >> 4])``, the two values byte b decodes to."""
    if len(values) != 16:
        raise FormatError(f"a nibble table needs a value for each of the 16 codes, got {len(values)}")
    key = (tuple(values), str(device))
    table = _tables.get(key)
    if table is None:
        v = torch.tensor(values, dtype=torch.float32)
        b = torch.arange(256)
        with torch.inference_mode(False):
            table = _tables[key] = torch.stack((v[b & 0x0F], v[b >> 4]), dim=1).to(device)
    return table


def quad_table(values: tuple[float, ...], device: torch.device | str) -> torch.Tensor:
    """float32 (65536, 4): row k holds the values of the four codes in the two bytes of the little-endian
    16-bit word k (1 MB; gathering a word's four values at once is faster than two byte gathers)."""
    key = ("quad", tuple(values), str(device))
    table = _tables.get(key)
    if table is None:
        pairs = pair_table(values, "cpu")
        k = torch.arange(65536)
        with torch.inference_mode(False):
            table = _tables[key] = torch.cat((pairs[k & 0xFF], pairs[k >> 8]), dim=1).to(device)
    return table


def decode_words_into(packed: torch.Tensor, out: torch.Tensor, values: tuple[float, ...],
                      idx: torch.Tensor) -> torch.Tensor:
    """``out`` (contiguous float32, ``packed``'s rows x 2 codes per byte) = ``values[code]`` of every code of
    the contiguous uint8 ``packed`` (an even number of bytes per row), gathered a 16-bit word (four codes) at a
    time through :func:`quad_table`; ``idx`` is an int32 scratch of at least ``packed.numel() // 2`` elements.
    Bit for bit :func:`decode_nibbles`."""
    n = packed.numel() // 2
    i = idx[:n]
    i.copy_(packed.reshape(-1).view(torch.int16))
    i.bitwise_and_(0xFFFF)  # the word as unsigned
    torch.index_select(quad_table(values, packed.device), 0, i, out=out.view(-1, 4))
    return out

