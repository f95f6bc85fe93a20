"""The 4-bit formats on the CPU (INT4 weight-only, NVFP4 W4A4 and weight-only), decoded into reused memory.

No CPU instruction multiplies 4-bit codes with these formats' scales, so the product runs on the float GEMM:
the weight decoded to float32 per call (nothing decoded is kept, so the model holds its plan's bytes) and,
for NVFP4 with activations, the activation fake-quantized. Done by the formats' reference code, each of those
temporaries is a fresh allocation, and the large ones (a 1280-channel 3x3 conv's weight is 59 MB) are fresh
pages from the kernel on every call. These kernels compute the same numbers, bit for bit, into the
:mod:`.workspace` and a block of rows at a time, so each pass over a block finds it in cache:

* weights, ``CHUNK`` elements at a time: INT4's nibbles minus 8 in int8, converted to float32 by the copy
  into place (faster than a table gather), NVFP4's by a table gather of four codes (a 16-bit word) at a
  time (:func:`mpsearch.formats.packing.decode_words_into`); then the scales, in place;
* NVFP4 activations: the tensor's amax first (for a conv, a max-pool of each pixel's channel amax: the
  patches' amax without building them), then each block of rows fake-quantized with that amax (the rows of
  a tensor quantize the same alone as in the whole, given its amax) straight into the GEMM's input;
* convolutions with NVFP4 activations: the im2col rows copied into the workspace block by block and
  quantized in place.

A call whose temporaries autograd could keep (a grad-recording pass), one given an already dequantized
weight (the profiler's), or one outside what these kernels take returns None: the reference runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpsearch.formats import Packed, get_format
from mpsearch.formats.base import abs_max
from mpsearch.formats.int4 import Int4
from mpsearch.formats.nvfp4 import BLOCK, SIGNED_GRID, nvfp4_fake_quantize
from mpsearch.formats.packing import decode_words_into
from mpsearch.formats.patches import patch_amax, patch_view
from mpsearch.formats.registry import available_formats
from mpsearch.runtime.kernels import register_kernel
from mpsearch.runtime.kernels.cpu import loops
from mpsearch.runtime.kernels.cpu.workspace import reusable, rows_per_block, scratch


def decode_into(packed: Packed, out: torch.Tensor, *, tensor_scale: bool = True) -> torch.Tensor:
    """The weight matrix of an INT4 or NVFP4 ``packed`` written into ``out`` (a contiguous (out, in) tensor),
    bit for bit ``format.dequantize(packed)`` as float32, then converted to ``out``'s dtype. NVFP4 with
    ``tensor_scale=False``: the elements times their block scales only (exact in bfloat16)."""
    q = packed.tensors["qweight"]
    rows, cols = out.shape
    nvfp4 = packed.format == "nvfp4"
    if loops.takes(q, out) and (out.dtype == torch.float32 or (nvfp4 and not tensor_scale
                                                                 and out.dtype == torch.bfloat16)):
        t = packed.tensors
        if nvfp4:  # one native loop (:mod:`.loops`), the same numbers
            return loops.nvfp4_decode_into(q, t["block_scale"].contiguous(),
                                             t["tensor_scale"] if tensor_scale else None, out)
        return loops.int4_decode_into(q, t["scale"], t["zero"], get_format(packed.format).group, out)
    step = rows_per_block(cols)
    # a float32 block to decode into when ``out`` is not float32 (the block is then converted into it)
    tmp = None if out.dtype == torch.float32 else scratch("decoded_f32", (min(step, rows), cols), torch.float32,
                                                           q.device)
    if nvfp4:  # E2M1 values are not linear in the code: a table gather, four codes (a 16-bit word) at a time
        idx = scratch("codes", (min(step, rows) * cols // 4,), torch.int32, q.device)
        t = packed.tensors
        eff = t["block_scale"].to(torch.float32)
        if tensor_scale:
            eff = eff * t["tensor_scale"].to(torch.float32)  # as nvfp4_decode_packed
        group = BLOCK
    else:
        group = get_format(packed.format).group
        scale = packed.tensors["scale"]
        zero = packed.tensors["zero"]
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        dst = out[r0:r1] if tmp is None else tmp[:r1 - r0]
        blk = dst.view(r1 - r0, cols // group, group)
        if nvfp4:
            decode_words_into(q[r0:r1], dst, SIGNED_GRID, idx)
            blk.mul_(eff[r0:r1, :, None])
        else:  # q - 8 from each nibble in int8 (exact), converted by the copy; then * scale + zero, as
            # Int4.dequantize: a multiply, then an add (faster than the gather)
            qb = q[r0:r1]
            pair = dst.view(r1 - r0, cols // 2, 2)
            pair[..., 0].copy_(torch.bitwise_and(qb, 0x0F).view(torch.int8).sub_(8))
            pair[..., 1].copy_(torch.bitwise_right_shift(qb, 4).view(torch.int8).sub_(8))
            blk.mul_(scale[r0:r1, :, None].to(torch.float32)).add_(zero[r0:r1, :, None].to(torch.float32))
        if tmp is not None:
            out[r0:r1].copy_(dst)
    return out


def _weight(packed: Packed, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight in ``dtype``, decoded into the workspace (converted as the reference converts)."""
    rows = packed.shape[0]
    cols = packed.tensors["qweight"].shape[1] * 2
    w = decode_into(packed, scratch("weight", (rows, cols), torch.float32, packed.tensors["qweight"].device))
    if packed.dtype != torch.float32:
        w = w.to(packed.dtype)
    return w.to(dtype)


def _quantized_rows_into(src, dst: torch.Tensor, amax: torch.Tensor) -> None:
    """``dst`` (float rows, contiguous) = NVFP4 fake quantization of ``src`` (same shape, any strides) with
    the tensor amax ``amax``, a block of rows at a time (``src`` may be ``dst``)."""
    rows, cols = dst.shape
    if dst.dtype == torch.float32 and loops.takes_activations(src, amax, dst):
        loops.nvfp4_rows_into(src, amax, dst)  # one native loop (:mod:`.loops`), the same numbers
        return
    step = rows_per_block(cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        if dst.dtype == torch.float32:
            nvfp4_fake_quantize(src[r0:r1], amax, out=dst[r0:r1])
        else:
            dst[r0:r1].copy_(nvfp4_fake_quantize(src[r0:r1], amax))


def _linear(activations: bool):
    def kernel(x2, packed, *, cache, dequantized):
        if dequantized is not None or x2.dim() != 2 or not x2.numel() or not reusable(x2):
            return None
        if activations:
            if x2.shape[1] % BLOCK:
                return None  # the reference raises its own error
            xq = scratch("act", x2.shape, x2.dtype, x2.device)
            _quantized_rows_into(x2, xq, abs_max(x2))
            x2 = xq
        return x2 @ _weight(packed, x2.dtype).t()
    return kernel


def patch_rows(view: torch.Tensor):
    """Blocks of about ``CHUNK`` elements of the im2col rows of a patch view (N, oh, ow, C, kh, kw) (whole
    output-image rows of one image each): ``(r0, r1, src)`` with ``src`` the view of rows r0:r1, to copy
    into a (r1 - r0, C * kh * kw) buffer as ``buf.view(src.shape).copy_(src)``."""
    n, oh, ow = view.shape[:3]
    step = max(1, rows_per_block(view[0, 0, 0].numel()) // max(ow, 1))  # output-image rows per block
    for b in range(n):
        for i0 in range(0, oh, step):
            i1 = min(oh, i0 + step)
            yield (b * oh + i0) * ow, (b * oh + i1) * ow, view[b, i0:i1]


def nvfp4_patches(x, kernel_size, dilation, padding, stride):
    """``(patch view, padded input, oh, ow, columns per patch, the patches' amax)`` of a conv with NVFP4 activations,
    the amax without building the patches; None where the kernels do not take it (columns not in blocks of 16,
    nothing to compute)."""
    view, xp, oh, ow = patch_view(x, kernel_size, dilation, padding, stride)
    n, _, _, c, kh, kw = view.shape
    cols_n = c * kh * kw
    if cols_n % BLOCK or not n * oh * ow or not cols_n:
        return None
    return view, xp, oh, ow, cols_n, patch_amax(xp, (kh, kw), stride, dilation).amax().to(torch.float32)


def jit_patches_into(x, xp, kernel_size, dilation, stride, oh, ow, amax, out) -> bool:
    """The quantized patches written into ``out`` by :func:`loops.nvfp4_patches_into` (read from the padded
    input, no im2col copy) where it takes the call (:func:`loops.takes_activations`); False where not."""
    if not loops.takes_activations(x, amax, out):
        return False
    loops.nvfp4_patches_into(xp.contiguous(), kernel_size, stride, dilation, oh, ow, amax, out)
    return True


def nvfp4_patches_cpu(x, packed, kernel_size, dilation, padding, stride, *, cache, dequantized):
    """The conv with NVFP4 activations: ``Format.matmul_patches`` (im2col, fake-quantized rows, GEMM) through
    the workspace, a block of patch rows at a time."""
    if dequantized is not None or x.dim() != 4 or not reusable(x):
        return None
    setup = nvfp4_patches(x, kernel_size, dilation, padding, stride)
    if setup is None:
        return None
    view, xp, oh, ow, cols_n, amax = setup
    cols = scratch("patches", (view.shape[0] * oh * ow, cols_n), x.dtype, x.device)
    if jit_patches_into(x, xp, kernel_size, dilation, stride, oh, ow, amax, cols):
        return cols @ _weight(packed, x.dtype).t(), oh, ow
    for r0, r1, src in patch_rows(view):
        cols[r0:r1].view(src.shape).copy_(src)
        _quantized_rows_into(cols[r0:r1], cols[r0:r1], amax)
    return cols @ _weight(packed, x.dtype).t(), oh, ow


def conv_cpu(x, packed, bias, stride, padding, dilation, *, cache, dequantized):
    """The weight-only conv with the weight decoded into the workspace."""
    if dequantized is not None or not reusable(x):
        return None
    w = _weight(packed, x.dtype).view(packed.shape)
    return F.conv2d(x, w, bias, stride, padding, dilation)


#: the W4A4 linear kernel (NVFP4 with activations), bit for bit the reference
nvfp4_linear_cpu = _linear(True)


def _register() -> None:
    int4s = [n for n in available_formats(variants=True) if isinstance(get_format(n), Int4)]
    for name in ("nvfp4", *int4s):
        register_kernel("cpu", name, activations=False)(_linear(False))
        register_kernel("cpu", name, activations=False, op="conv")(conv_cpu)
    register_kernel("cpu", "nvfp4", activations=True)(nvfp4_linear_cpu)
    register_kernel("cpu", "nvfp4", activations=True, op="patches")(nvfp4_patches_cpu)


_register()

__all__ = ["decode_into", "patch_rows", "nvfp4_patches", "nvfp4_linear_cpu", "nvfp4_patches_cpu", "conv_cpu"]
