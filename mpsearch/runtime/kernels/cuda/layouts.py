"""Pure-tensor conversions from mpsearch's packed formats to the layouts of the GPU kernels, and back.

They run on any device (tests check them on the CPU); the CUDA kernels in :mod:`mpsearch.runtime.kernels.cuda`
call them once per weight and device.

INT4 -> tinygemm (``torch._weight_int4pack_mm``). mpsearch stores ``q`` in 0..15, two per byte with element 2k
in the low nibble, and float16 ``scale``/``zero`` per group of G with ``x^ = (q - 8) * scale + zero``.
tinygemm's convention is the same formula, ``x^ = (q - 8) * scale + zero`` with ``zero`` the value at code 8
(torchao's ``ZeroPointDomain.FLOAT``): our codes, scales and zeros map one to one, no offset or sign change.
Its inputs: ``_convert_weight_to_int4pack`` (CUDA) takes uint8 (N, K/2) with element 2k in the *high* nibble
(so our bytes have their nibbles swapped), and ``qScaleAndZeros`` is (K/G, N, 2) holding ``[scale, zero]``, in
bfloat16 on CUDA. Codes are lossless; float16 -> bfloat16 rounds scale and zero (3 fewer mantissa bits), an
extra error per element of at most ``8 * |scale16 - scale_bf16| + |zero16 - zero_bf16|``
(<= 2^-8 * (8 * |scale| + |zero|)); on the CPU kernel (float32 scales) the map is exact.

NVFP4 -> ``torch._scaled_mm`` (float4_e2m1fn_x2 with float8_e4m3fn block scales). torch packs element 2k in the
low nibble and encodes E2M1 as sign << 3 | magnitude code (0, 0.5, 1, 1.5, 2, 3, 4, 6), exactly our bytes, so
the codes are a zero-copy ``view``. Block scales (rows, K/16) go into cuBLAS's blocked layout: padded to
128-row x 4-column tiles, each tile stored as 32 x (4 x 4) (``to_blocked``; ``from_blocked`` inverts it). The
per-tensor scales are not part of the GEMM: the product is multiplied by ``s_t(x) * s_t(w)`` afterwards.
"""

from __future__ import annotations

import torch

from mpsearch.formats.packing import unpack_nibbles

TINYGEMM_GROUPS = (32, 64, 128, 256)


# ------------------------------------------------------------------------------------------------ INT4

def swap_nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """Our INT4 bytes (element 2k low) as tinygemm's CUDA input (element 2k high): uint8, same shape."""
    q = qweight.to(torch.uint8)
    return ((q & 0x0F) << 4) | (q >> 4)


def tinygemm_scales_and_zeros(scale: torch.Tensor, zero: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """``qScaleAndZeros`` (K/G, N, 2) = ``[scale, zero]`` from our (N, K/G) scale and zero, in ``dtype``."""
    return torch.stack((scale.to(dtype), zero.to(dtype)), dim=-1).transpose(0, 1).contiguous()


def inner_k_tiles(k: int) -> int:
    """The largest ``innerKTiles`` (8, 4, 2) whose tile of ``innerKTiles * 16`` inputs divides ``k``; 0 if none."""
    for tiles in (8, 4, 2):
        if k % (tiles * 16) == 0:
            return tiles
    return 0


def tinygemm_decode(codes_high_first: torch.Tensor, scales_and_zeros: torch.Tensor, group: int) -> torch.Tensor:
    """The weight (N, K) float32 that tinygemm's inputs stand for: ``(q - 8) * scale + zero`` with scale and
    zero as stored (a pure-torch reference for tests: it reads the layout the kernel reads)."""
    hi, lo = codes_high_first >> 4, codes_high_first & 0x0F
    q = torch.stack((hi, lo), dim=-1).reshape(codes_high_first.shape[0], -1).to(torch.float32)
    n, k = q.shape
    sz = scales_and_zeros.transpose(0, 1).to(torch.float32)  # (N, K/G, 2)
    q = q.reshape(n, k // group, group)
    return ((q - 8) * sz[..., 0:1] + sz[..., 1:2]).reshape(n, k)


def tinygemm_cpu_weight(qweight: torch.Tensor) -> torch.Tensor:
    """Our INT4 bytes as the int32 (N, K) codes ``torch._convert_weight_to_int4pack_for_cpu`` takes."""
    return unpack_nibbles(qweight).to(torch.int32)


# ----------------------------------------------------------------------------------------------- NVFP4

def as_fp4x2(qweight: torch.Tensor) -> torch.Tensor:
    """Our NVFP4 bytes viewed as ``torch.float4_e2m1fn_x2`` (zero copy: same storage, same shape)."""
    return qweight.view(torch.float4_e2m1fn_x2)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """(rows, cols) block scales in cuBLAS's blocked layout, flat: rows padded to 128 and cols to 4 with
    zeros, each 128 x 4 tile stored as 32 rows of (4 row-groups x 4 cols)."""
    rows, cols = scales.shape
    rb, cb = _ceil(rows, 128), _ceil(cols, 4)
    padded = scales
    if (rows, cols) != (rb * 128, cb * 4):
        # zeros of any dtype (float8 included) through a byte view
        padded = torch.zeros((rb * 128, cb * 4), dtype=scales.dtype, device=scales.device)
        padded[:rows, :cols] = scales
    blocks = padded.view(rb, 128, cb, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1, 32, 16).flatten()


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_blocked`: the (rows, cols) scales (padding dropped)."""
    rb, cb = _ceil(rows, 128), _ceil(cols, 4)
    tiles = blocked.reshape(rb * cb, 32, 4, 4).transpose(1, 2)  # (tile, 4, 32, 4): row = 32 * r4 + r32
    tiles = tiles.reshape(rb, cb, 128, 4).permute(0, 2, 1, 3).reshape(rb * 128, cb * 4)
    return tiles[:rows, :cols].contiguous()


def blocked_numel(rows: int, cols: int) -> int:
    """Elements of the blocked scales of a (rows, cols) scale matrix (what ``_scaled_mm`` checks)."""
    return _ceil(rows, 128) * 128 * _ceil(cols, 4) * 4


__all__ = ["swap_nibbles", "tinygemm_scales_and_zeros", "inner_k_tiles", "tinygemm_decode", "tinygemm_cpu_weight",
           "as_fp4x2", "to_blocked", "from_blocked", "blocked_numel", "TINYGEMM_GROUPS"]
