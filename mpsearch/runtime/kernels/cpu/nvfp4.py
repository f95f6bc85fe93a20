"""NVFP4 W4A4 on the CPU's bfloat16 GEMM: the arithmetic of NVFP4 hardware, on CPUs where it is faster.

An NVFP4 value is an E2M1 element times an E4M3 block scale times a float32 tensor scale. The first two
multiply exactly into a bfloat16 (at most 2 x 4 significant bits, exponents within range), so a W4A4 layer
is ``(A @ W.T) * s_a * s_w`` with ``A`` and ``W`` the element-times-block-scale values held exactly in
bfloat16: the products are exact, the sums float32 inside the GEMM, rounded to bfloat16 once at the end,
then scaled by both tensor scales in float32. That is what ``torch._scaled_mm`` does on NVFP4 hardware (the
CUDA kernel in :mod:`.cuda`), and on a CPU with bfloat16 dot-product instructions (AVX-512 BF16, AMX) the
bfloat16 GEMM runs faster (docs/benchmarks.md, bench_speed), with half the bytes to write for the quantized
activations and decoded weights. Not bit for bit the reference (which rounds each dequantized value to
float32 and sums in float32 without the final bfloat16 rounding): every output is within 2^-8 of its
magnitude plus float32 summation-order noise, per layer (``tests/runtime/test_cpu_nvfp4.py``); over a
whole network the differences move downstream activations across rounding boundaries, with the same error
against fp32 (``scripts/bench_exactness.py``). The codes and scales, what the plan stores, are the same bits.

The choice is measured once per process (:func:`bf16_is_faster`: both GEMMs on one shape, briefly);
``MPSEARCH_KERNELS=nvfp4=bf16|float`` (or :func:`mpsearch.runtime.kernels.select_kernels`) fixes it. On
the float path, and for calls this kernel does not take (weight-only NVFP4, where activations are not exact in bfloat16;
grad-recording calls; other dtypes), :mod:`.decode`'s bit-for-bit kernels or the reference run.
"""

from __future__ import annotations

import torch

from mpsearch.formats import Packed
from mpsearch.formats.base import abs_max
from mpsearch.formats.nvfp4 import BLOCK, E2M1_MAX, E4M3_MAX, block_scales, round_e2m1
from mpsearch.runtime.kernels import register_kernel
from mpsearch.runtime.kernels.choice import PathChoice, faster_than
from mpsearch.runtime.kernels.cpu import decode, loops
from mpsearch.runtime.kernels.cpu.workspace import reusable, rows_per_block, scratch


def _measure() -> bool:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    ab, bb = a.bfloat16(), b.bfloat16()
    return faster_than(lambda: ab @ bb, lambda: a @ b)


#: the CPU's NVFP4 W4A4 path, ``nvfp4=`` of ``MPSEARCH_KERNELS`` / :func:`mpsearch.runtime.kernels.select_kernels`
_CHOICE = PathChoice("nvfp4", "bf16", _measure)
_STATE = _CHOICE.state


def bf16_is_faster() -> bool:
    """Whether the bfloat16 GEMM beats the float32 one by at least 1.5x here (256x1024x1024, best of three,
    at the current thread count); measured once per process."""
    return _CHOICE.faster()


def uses_bf16() -> bool:
    """Whether NVFP4 W4A4 calls on the CPU run on the bfloat16 GEMM now."""
    return _CHOICE.uses_fast()


def _activation_into(src: torch.Tensor, dst: torch.Tensor, amax: torch.Tensor) -> None:
    """``dst`` (bfloat16 rows) = each element of ``src``'s rows rounded to E2M1 with its sign, times its
    block's E4M3 scale (exact in bfloat16), a block of rows at a time, with the tensor amax ``amax``. The codes
    are the reference's: the same ``|x| / (block scale * tensor scale)``."""
    rows, cols = dst.shape
    if loops.takes_activations(src, amax, dst):
        loops.nvfp4_rows_into(src, amax, dst)  # one native loop, the same numbers
        return
    step = rows_per_block(cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        x, ax, bs8, _, eff, live = block_scales(src[r0:r1], amax)
        y = ax.div_(torch.where(live, eff, torch.ones_like(eff))[..., None])
        v = round_e2m1(y).copysign_(x)  # a block with scale 0 is zeroed by its scale below
        torch.mul(v, bs8.to(torch.float32)[..., None], out=v)
        dst[r0:r1].copy_(v.view(r1 - r0, cols))


def _product(a_bf16: torch.Tensor, amax: torch.Tensor, packed: Packed, dtype: torch.dtype) -> torch.Tensor:
    """``(A @ W.T)`` on the bfloat16 GEMM (bfloat16 out), to float32, times both tensor scales (the
    activation's from its amax, as ``block_scales`` computes it)."""
    w = packed.tensors["qweight"]
    w_bf16 = decode.decode_into(packed, scratch("nvfp4_weight_bf16", (w.shape[0], w.shape[1] * 2),
                                                    torch.bfloat16, w.device), tensor_scale=False)
    s_a = (amax / (E2M1_MAX * E4M3_MAX)).reshape(1)
    y = a_bf16 @ w_bf16.t()
    return y.to(torch.float32).mul_(s_a * packed.tensors["tensor_scale"].to(torch.float32)).to(dtype)


def nvfp4_linear_bf16(x2, packed, *, cache, dequantized):
    """W4A4 ``x2 @ W.T`` on the bfloat16 GEMM (None: the float path is in force or the call is not taken)."""
    if not uses_bf16() or dequantized is not None or x2.dim() != 2 or not x2.numel() or x2.shape[1] % BLOCK \
            or x2.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not reusable(x2):
        return decode.nvfp4_linear_cpu(x2, packed, cache=cache, dequantized=dequantized)
    a = scratch("nvfp4_act_bf16", x2.shape, torch.bfloat16, x2.device)
    amax = abs_max(x2)
    _activation_into(x2, a, amax)
    return _product(a, amax, packed, x2.dtype)


def nvfp4_patches_bf16(x, packed, kernel_size, dilation, padding, stride, *, cache, dequantized):
    """The W4A4 conv on the bfloat16 GEMM: im2col rows quantized a block at a time into the workspace."""
    if not uses_bf16() or dequantized is not None or x.dim() != 4 or not reusable(x) \
            or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return decode.nvfp4_patches_cpu(x, packed, kernel_size, dilation, padding, stride, cache=cache,
                                            dequantized=dequantized)
    setup = decode.nvfp4_patches(x, kernel_size, dilation, padding, stride)
    if setup is None:
        return None
    view, xp, oh, ow, cols_n, amax = setup
    a = scratch("nvfp4_act_bf16", (view.shape[0] * oh * ow, cols_n), torch.bfloat16, x.device)
    if decode.jit_patches_into(x, xp, kernel_size, dilation, stride, oh, ow, amax, a):
        return _product(a, amax, packed, x.dtype), oh, ow
    rows = None
    for r0, r1, src in decode.patch_rows(view):
        if rows is None:  # the first block is the largest
            rows = scratch("nvfp4_patch_rows", (r1 - r0, cols_n), x.dtype, x.device)
        blk = rows[:r1 - r0]
        blk.view(src.shape).copy_(src)
        _activation_into(blk, a[r0:r1], amax)
    return _product(a, amax, packed, x.dtype), oh, ow


register_kernel("cpu", "nvfp4", activations=True)(nvfp4_linear_bf16)
register_kernel("cpu", "nvfp4", activations=True, op="patches")(nvfp4_patches_bf16)

__all__ = ["bf16_is_faster", "uses_bf16", "nvfp4_linear_bf16",
           "nvfp4_patches_bf16"]
