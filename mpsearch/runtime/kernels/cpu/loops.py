"""Native loops for the 4-bit formats on the CPU, compiled by numba: each decode or quantization is one pass.

In torch each step of a 4-bit weight's decode (the code gather, the block-scale multiply, the conversion) or
of NVFP4's activation quantization (block amax, block scale, rounding, sign, scale, and for a conv the im2col
copy) is its own pass over memory, and some of them fall off the vectorized path (a bfloat16 multiply broadcast
over 16-element blocks runs many times slower than its float32 twin). Together those passes cost a 4-bit
layer on the CPU more than its GEMM (see docs/benchmarks.md, bench_speed's reading). Here each is one loop
over the data, run on all of torch's threads:

* :func:`nvfp4_decode_into`: NVFP4 weights to float32 (bit for bit ``nvfp4_decode_packed``) or to the
  element-times-block-scale values in bfloat16 (through a 256 x 16 table of exact products);
* :func:`int4_decode_into`: INT4 weights to float32, ``(q - 8) * scale + zero`` as ``Int4.dequantize``;
* :func:`nvfp4_rows_into` / :func:`nvfp4_patches_into`: NVFP4 activation rows (or a conv's patches, read
  straight from the padded input: no im2col copy) quantized with a given tensor amax, to float32 (the
  reference's fake quantization) or to bfloat16 element-times-block-scale values (NVFP4 hardware's inputs).

Every loop computes in float32 with the reference's operations in the reference's order (numba does not
contract a multiply and an add into an FMA without ``fastmath``), so each output equals the torch kernel's bit
for bit (``tests/runtime/test_cpu_jit.py``). Compiled on first use (about a second each; cached on disk
where numba can write). Off where numba is not installed, with ``MPSEARCH_KERNELS=jit=off`` (or
:func:`mpsearch.runtime.kernels.select_kernels` / :func:`~mpsearch.runtime.kernels.using_kernels` with
``"jit=off"``), and in a process forked from one that may have run them (GNU OpenMP is not fork-safe): the
torch kernels run.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mpsearch.formats.nvfp4 import SIGNED_GRID
from mpsearch.runtime.kernels.choice import env_kernel_setting

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

_STATE = {"enabled": env_kernel_setting("jit") != "off", "forked": False}

_F0, _F1, _F6 = np.float32(0.0), np.float32(1.0), np.float32(6.0)
_TENSOR_DIV = np.float32(6.0 * 448.0)  # E2M1_MAX * E4M3_MAX
_E4M3_MAX = np.float32(448.0)
_E4M3_MIN_NORMAL = np.float32(2.0 ** -6)
_E4M3_SUB = np.float32(2.0 ** 14)  # float32's ulp here is 2^-9, E4M3's subnormal step
_EXP_MASK, _EXP_1, _EXP_4 = np.uint32(0x7F800000), np.uint32(127 << 23), np.uint32(129 << 23)
_MAGIC = np.uint32((22 << 23) | 0x400000)


def jit_enabled() -> bool:
    """Whether the numba loops run now (numba installed, not turned off, not in a forked child)."""
    return numba is not None and _STATE["enabled"] and not _STATE["forked"]


def _after_fork_in_child() -> None:
    # GNU OpenMP, numba's threads here, is not fork-safe: a forked child that starts a parallel loop is
    # terminated. The torch loops compute the same bits, so a forked child runs those.
    _STATE["forked"] = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def takes(*tensors: torch.Tensor) -> bool:
    """Whether the loops run now and take these tensors (CPU, contiguous, nothing autograd records)."""
    return jit_enabled() and all(t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad
                                 for t in tensors)


def takes_activations(x: torch.Tensor, amax: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether :func:`nvfp4_rows_into` / :func:`nvfp4_patches_into` take this call: :func:`takes` ``x`` and
    ``out``, ``x`` in float32 (the loops read float32) and a finite amax (the reference's arithmetic on an
    infinite or NaN scale is left to the torch loops)."""
    return x.dtype == torch.float32 and takes(x, out, amax) and bool(torch.isfinite(amax))


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor's memory (bfloat16 as uint16, float8 as uint8)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.float8_e4m3fn:
        t = t.view(torch.uint8)
    a = t.detach().numpy()
    return a.view(np.uint16) if a.dtype == np.int16 else a


def _threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


_TABLES: dict = {}
_EMPTY_F, _EMPTY_B = np.empty((0, 0), np.float32), np.empty((0, 0), np.uint16)  # the output not written


def _tables():
    """(E4M3 byte -> float32 value, (E4M3 byte, E2M1 code) -> bfloat16 bits of their product, E2M1 code ->
    float32 value)."""
    if not _TABLES:
        e4m3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32)
        grid = torch.tensor(SIGNED_GRID, dtype=torch.float32)
        prod = (e4m3[:, None] * grid[None, :]).to(torch.bfloat16)  # exact: at most 2 x 4 significant bits
        _TABLES.update(e4m3=e4m3.numpy().copy(), prod=_np(prod).copy(), grid=grid.numpy().copy())
    return _TABLES["e4m3"], _TABLES["prod"], _TABLES["grid"]


def _njit(**options):
    """numba's ``njit`` with the loops' options: numpy's error model (no zero-division branch in the loops) and
    an on-disk cache, or none where numba finds no writable place for it (a read-only install, no writable home):
    the loops then compile once per process instead of failing the import."""
    def decorate(fn):
        try:
            return njit(cache=True, error_model="numpy", **options)(fn)
        except RuntimeError as e:  # numba: "cannot cache function 'f': no locator available for file ..."
            if "cannot cache function" not in str(e):
                raise
            return njit(cache=False, error_model="numpy", **options)(fn)
    return decorate


if numba is not None:
    @_njit(inline="always")
    def _bf16_bits(v):
        b = np.float32(v).view(np.uint32)
        return np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))

    @_njit(inline="always")
    def _to_e4m3(v):
        """float32 0 <= v <= 448 rounded to E4M3 (nearest, ties to even), as float32."""
        if v < _E4M3_MIN_NORMAL:
            return (v + _E4M3_SUB) - _E4M3_SUB
        b = np.float32(v).view(np.uint32)
        b = (b + np.uint32(0x7FFFF) + ((b >> np.uint32(20)) & np.uint32(1))) & np.uint32(0xFFF00000)
        return np.uint32(b).view(np.float32)

    @_njit(inline="always")
    def _quant_block(buf, s_t, denom, bf16):
        """NVFP4's recipe on the 16 float32 values in ``buf``: each replaced by its E2M1 value with x's sign;
        returns what to multiply them by: the effective scale (``bf16`` False) or the block scale (True)."""
        amax = _F0
        for j in range(16):
            amax = max(amax, abs(buf[j]))
        bs = _F0
        if denom > _F0:
            bs = amax / denom
            if bs > _E4M3_MAX:
                bs = _E4M3_MAX
        bs = _to_e4m3(bs)
        eff = bs * s_t
        div = eff if eff > _F0 else _F1
        for j in range(16):
            x = buf[j]
            y = abs(x) / div
            c = np.float32(y).view(np.uint32) & _EXP_MASK
            c = min(max(c, _EXP_1), _EXP_4) + _MAGIC
            cf = np.uint32(c).view(np.float32)
            v = min((y + cf) - cf, _F6)
            buf[j] = np.copysign(v, x)
        return bs if bf16 else eff

    @_njit(inline="always")
    def _store(buf, m, r, o, out_f32, out_bf16, bf16):
        """Row ``r``'s 16 outputs from column ``o``: ``buf`` x ``m``, as float32 or as bfloat16 bits."""
        if bf16:
            for j in range(16):
                out_bf16[r, o + j] = _bf16_bits(buf[j] * m)
        else:
            for j in range(16):
                out_f32[r, o + j] = buf[j] * m

    @_njit(parallel=True)
    def _rows(x, amax, out_f32, out_bf16, bf16):
        rows, cols = x.shape
        s_t = amax / _TENSOR_DIV
        denom = _F6 * s_t
        for r in prange(rows):
            buf = np.empty(16, np.float32)
            for b in range(cols // 16):
                for j in range(16):
                    buf[j] = x[r, b * 16 + j]
                _store(buf, _quant_block(buf, s_t, denom, bf16), r, b * 16, out_f32, out_bf16, bf16)

    @_njit(parallel=True)
    def _patches(xp, kh, kw, sh, sw, dh, dw, oh, ow, amax, out_f32, out_bf16, bf16):
        n_img, chans = xp.shape[0], xp.shape[1]
        cols = chans * kh * kw
        s_t = amax / _TENSOR_DIV
        denom = _F6 * s_t
        for r in prange(n_img * oh * ow):
            n = r // (oh * ow)
            y0, x0 = ((r // ow) % oh) * sh, (r % ow) * sw
            row = np.empty(cols, np.float32)  # the patch, columns in the weight's (C, kh, kw) order
            k = 0
            for c in range(chans):
                for ky in range(kh):
                    for kx in range(kw):
                        row[k] = xp[n, c, y0 + ky * dh, x0 + kx * dw]
                        k += 1
            for b in range(cols // 16):
                buf = row[b * 16:b * 16 + 16]
                _store(buf, _quant_block(buf, s_t, denom, bf16), r, b * 16, out_f32, out_bf16, bf16)

    @_njit(parallel=True)
    def _nvfp4_f32(q, bs, e4m3, grid, s_t, out):
        rows, half = q.shape
        for r in prange(rows):
            for b in range(half // 8):
                eff = e4m3[bs[r, b]] * s_t
                for j in range(8):
                    byte = q[r, b * 8 + j]
                    out[r, b * 16 + 2 * j] = grid[byte & 15] * eff
                    out[r, b * 16 + 2 * j + 1] = grid[byte >> 4] * eff

    @_njit(parallel=True)
    def _nvfp4_bf16(q, bs, prod, out):
        rows, half = q.shape
        for r in prange(rows):
            for b in range(half // 8):
                s = bs[r, b]
                for j in range(8):
                    byte = q[r, b * 8 + j]
                    out[r, b * 16 + 2 * j] = prod[s, byte & 15]
                    out[r, b * 16 + 2 * j + 1] = prod[s, byte >> 4]

    @_njit(parallel=True)
    def _int4_f32(q, scale, zero, group, out):
        rows, half = q.shape
        per = group // 2  # bytes per group
        for r in prange(rows):
            tab = np.empty(16, np.float32)
            for g in range(half // per):
                s, z = scale[r, g], zero[r, g]
                for c in range(16):  # the group's 16 values, each computed as the reference computes it
                    tab[c] = np.float32(c - 8) * s + z
                for k in range(g * per, g * per + per):
                    byte = q[r, k]
                    out[r, 2 * k] = tab[byte & 15]
                    out[r, 2 * k + 1] = tab[byte >> 4]


def nvfp4_decode_into(qweight: torch.Tensor, block_scale: torch.Tensor, tensor_scale: torch.Tensor | None,
                      out: torch.Tensor) -> torch.Tensor:
    """``out`` (float32 or bfloat16, (rows, 2 * bytes per row)) = the NVFP4 weight's values: float32 element x
    (block scale x tensor scale) as ``nvfp4_decode_packed`` computes it, or, with ``tensor_scale`` None,
    element x block scale (bfloat16 holds those exactly)."""
    e4m3, prod, grid = _tables()
    _threads()
    if out.dtype == torch.bfloat16:
        if tensor_scale is not None:
            raise ValueError("a bfloat16 decode holds element x block scale only (tensor_scale=None)")
        _nvfp4_bf16(_np(qweight), _np(block_scale), prod, _np(out))
    else:
        s_t = np.float32(1.0) if tensor_scale is None else np.float32(tensor_scale.to(torch.float32).item())
        _nvfp4_f32(_np(qweight), _np(block_scale), e4m3, grid, s_t, _np(out))
    return out


def int4_decode_into(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                     out: torch.Tensor) -> torch.Tensor:
    """``out`` (float32 (rows, 2 * bytes per row)) = ``(q - 8) * scale + zero`` per group, as ``Int4.dequantize``."""
    _threads()
    _int4_f32(_np(qweight), _np(scale.to(torch.float32).contiguous()), _np(zero.to(torch.float32).contiguous()),
              int(group), _np(out))
    return out


def nvfp4_rows_into(x2: torch.Tensor, amax: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` = NVFP4 activation quantization of float32 rows ``x2`` with the tensor amax ``amax``: float32
    ``out``: the fake-quantized values (``nvfp4_fake_quantize``); bfloat16: element x block scale."""
    _threads()
    bf16 = out.dtype == torch.bfloat16
    o = _np(out)
    _rows(_np(x2), np.float32(amax.item()), _EMPTY_F if bf16 else o, o if bf16 else _EMPTY_B, bf16)
    return out


def nvfp4_patches_into(xp: torch.Tensor, kernel, stride, dilation, oh: int, ow: int, amax: torch.Tensor,
                       out: torch.Tensor) -> torch.Tensor:
    """``out`` (N * oh * ow, C * kh * kw) = the NVFP4-quantized im2col rows of the padded float32 NCHW input
    ``xp`` (as :func:`nvfp4_rows_into` on ``im2col``'s rows), read from ``xp`` directly."""
    _threads()
    bf16 = out.dtype == torch.bfloat16
    o = _np(out)
    _patches(_np(xp), int(kernel[0]), int(kernel[1]), int(stride[0]), int(stride[1]), int(dilation[0]),
             int(dilation[1]), int(oh), int(ow), np.float32(amax.item()), _EMPTY_F if bf16 else o,
             o if bf16 else _EMPTY_B, bf16)
    return out


__all__ = ["jit_enabled", "takes", "takes_activations", "nvfp4_decode_into", "int4_decode_into", "nvfp4_rows_into",
           "nvfp4_patches_into"]
