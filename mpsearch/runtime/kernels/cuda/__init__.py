"""CUDA kernels behind the quantized modules (registered for device type ``"cuda"``).

* ``int8`` W8A8: activations quantized per token exactly as ``formats/int8.py`` does (same float32 ops), the
  integer product through ``torch._int_mm`` (int32, exact: K <= 133144), padded where cuBLASLt needs it
  (M > 16, K and N multiples of 8; zero rows/columns add nothing), then ``acc * (s_x * s_w)`` as the
  reference rescales. Bit for bit the CPU reference (which also holds the exact integer product).
* ``int4`` weight-only: tinygemm (``torch._weight_int4pack_mm``) for bfloat16 activations, N % 8 == 0. The
  int4pack layout and bfloat16 ``qScaleAndZeros`` are built once per device (:class:`LayoutCache`). Not bit
  for bit: scale/zero rounded to bfloat16 (see :mod:`.layouts`), bfloat16 products, float32 accumulation in
  the kernel's order, bfloat16 output. Other activation dtypes run the reference (dequantize + GEMM).
* ``nvfp4`` W4A4 on compute capability 10.x: activations encoded as the reference encodes them, then
  ``torch._scaled_mm`` on float4_e2m1fn_x2 with blocked E4M3 scales, times both tensor scales. Products of
  E2M1 x E4M3 values are exact; the sum is float32 in the GEMM's order, rounded to bfloat16, then scaled:
  not bit for bit. Elsewhere (and for K % 32 or N % 16) the reference runs: dequantize on the device and a
  16-bit GEMM (the weight-only path), with activations fake-quantized on the device when the plan says W4A4.

Device memory beyond the plan's bytes, while a layout is cached: int4 layers hold a second copy of their
weights (int4pack, K*N/2 bytes, plus bfloat16 scales, the size of the float16 ones): an int4 layer then takes
twice its planned bytes on the device. NVFP4 layers add their blocked scales (~N*K/16 bytes; the codes are
a view). INT8 layers add nothing (small layers with K or N not a multiple of 8 keep a padded copy). The
cached layouts are not parameters or buffers, so the plan's bytes (``measured_bytes``), the state_dict and
exports are the packed form only; ``layouts_per_call()`` trades the copies for a conversion per call. They
are not the stored form because tinygemm's bfloat16 scales lose bits the checkpoint keeps.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from mpsearch.formats import get_format, matrix_shape
from mpsearch.formats.int8 import INT32_SAFE_K, quantize_with_scales, rescale, row_scales
from mpsearch.formats.kernel_errors import is_unsupported
from mpsearch.formats.nvfp4 import nvfp4_encode
from mpsearch.formats.packing import pack_nibbles
from mpsearch.formats.patches import patch_amax, patch_view
from mpsearch.runtime.kernels import LayoutCache, register_kernel
from mpsearch.runtime.kernels.cuda.layouts import (
    TINYGEMM_GROUPS,
    as_fp4x2,
    inner_k_tiles,
    swap_nibbles,
    tinygemm_scales_and_zeros,
    to_blocked,
)

# (kernel name, device) pairs whose op said once that it has no kernel there (formats.kernel_errors.is_unsupported):
# the reference runs from then on. Any other error (out of memory included) propagates and turns nothing off.
_UNSUPPORTED: set = set()


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


# ------------------------------------------------------------------------------------------------ INT8

def int_mm_padded(qx: torch.Tensor, qw: torch.Tensor, cache=None) -> torch.Tensor:
    """Exact int32 ``qx @ qw.T`` (qx (M, K), qw (N, K), int8) through ``torch._int_mm``, zero-padding M to
    more than 16 and K, N to multiples of 8 (the padded weight is cached for small, odd-shaped layers)."""
    m, k = qx.shape
    n = qw.shape[0]
    kp, np_ = _round_up(k, 8), _round_up(n, 8)
    if (kp, np_) != (k, n):
        def build():
            return F.pad(qw, (0, kp - k, 0, np_ - n))
        qw = cache.get("int8_padded", (qw,), build) if cache is not None else build()
    mp = 32 if m <= 16 else m
    if (mp, kp) != (m, k):
        qx = F.pad(qx, (0, kp - k, 0, mp - m))
    return torch._int_mm(qx, qw.t())[:m, :n]


def _int8_product(qx_int8, packed, sx, cache, dtype):
    qw, scale = packed.tensors["qweight"], packed.tensors["scale"]
    try:
        acc = int_mm_padded(qx_int8, qw, cache)
    except RuntimeError as e:  # NotImplementedError included
        _give_up("int_mm", qx_int8.device, e)
        return None
    return rescale(acc, sx, scale).to(dtype)


@register_kernel("cuda", "int8", activations=True)
def int8_linear(x2, packed, *, cache=None, dequantized=None):
    qw = packed.tensors["qweight"]
    if (x2.dim() != 2 or x2.shape[1] != qw.shape[1] or not x2.numel() or qw.shape[1] > INT32_SAFE_K
            or ("int_mm", x2.device) in _UNSUPPORTED):
        return None
    xf = x2.to(torch.float32)
    mn, mx = torch.aminmax(xf, dim=1)
    sx = row_scales(torch.maximum(mx, -mn).abs_())
    return _int8_product(quantize_with_scales(xf, sx[:, None]), packed, sx, cache, x2.dtype)


@register_kernel("cuda", "int8", activations=True, op="patches")
def int8_patches(x, packed, kernel, dilation, padding, stride, *, cache=None, dequantized=None):
    """As ``Int8.matmul_patches``: patch amax = max-pool of the per-pixel channel amax, one division pass."""
    qw = packed.tensors["qweight"]
    if x.dim() != 4 or qw.shape[1] > INT32_SAFE_K or ("int_mm", x.device) in _UNSUPPORTED:
        return None
    view, xp, oh, ow = patch_view(x.to(torch.float32), kernel, dilation, padding, stride)
    n, _, _, c, kh, kw = view.shape
    if c * kh * kw != qw.shape[1] or not view.numel():
        return None
    sx = row_scales(patch_amax(xp, (kh, kw), stride, dilation)).reshape(-1)
    qx = quantize_with_scales(view, sx.view(n, oh, ow, 1, 1, 1)).view(n * oh * ow, c * kh * kw)
    y = _int8_product(qx, packed, sx, cache, x.dtype)
    return None if y is None else (y, oh, ow)


# ------------------------------------------------------------------------------------------------ INT4

def tinygemm_layout(packed):
    """(int4pack int32, qScaleAndZeros bfloat16) of an INT4 packed weight, on its device."""
    n, k = matrix_shape(packed.shape)
    codes = swap_nibbles(packed.tensors["qweight"]).reshape(n, k // 2).contiguous()
    wpack = torch._convert_weight_to_int4pack(codes, inner_k_tiles(k))
    return wpack, tinygemm_scales_and_zeros(packed.tensors["scale"], packed.tensors["zero"], torch.bfloat16)


@register_kernel("cuda", ("int4", "int4-g64", "int4-g32"), activations=False)
def int4_linear(x2, packed, *, cache=None, dequantized=None):
    n, k = matrix_shape(packed.shape)
    group = get_format(packed.format).group
    if (x2.dtype != torch.bfloat16 or x2.dim() != 2 or x2.shape[1] != k or n % 8 or not inner_k_tiles(k)
            or group not in TINYGEMM_GROUPS or ("tinygemm", x2.device) in _UNSUPPORTED):
        return None
    t = packed.tensors
    cache = cache if cache is not None else LayoutCache()
    try:
        wpack, sz = cache.get("tinygemm", (t["qweight"], t["scale"], t["zero"]), lambda: tinygemm_layout(packed))
        return torch._weight_int4pack_mm(x2.contiguous(), wpack, group, sz)
    except RuntimeError as e:  # e.g. a build or device without tinygemm (sm < 80)
        _give_up("tinygemm", x2.device, e)
        return None


# ----------------------------------------------------------------------------------------------- NVFP4

def nvfp4_supported(device) -> bool:
    """Whether ``device`` has FP4 tensor cores ``torch._scaled_mm`` drives (compute capability 10.x)."""
    return (torch.device(device).type == "cuda" and torch.cuda.get_device_capability(device)[0] == 10
            and ("scaled_mm_fp4", torch.device(device)) not in _UNSUPPORTED)


def nvfp4_weight_operands(packed):
    """(codes (N, K/2) float4_e2m1fn_x2, blocked block scales) of an NVFP4 weight."""
    return as_fp4x2(packed.tensors["qweight"]), to_blocked(packed.tensors["block_scale"])


def nvfp4_scaled_mm(a_codes, a_blocked, a_scale, b_codes, b_blocked, b_scale, out_dtype):
    """``(A @ B.T) * s_a * s_b`` from float4 codes (rows, K/2) and blocked scales of both operands."""
    y = torch._scaled_mm(a_codes, b_codes.t(), a_blocked, b_blocked, out_dtype=torch.bfloat16)
    return (y.to(torch.float32) * (a_scale * b_scale)).to(out_dtype)


@register_kernel("cuda", "nvfp4", activations=True)
def nvfp4_linear(x2, packed, *, cache=None, dequantized=None):
    n, k = matrix_shape(packed.shape)
    if x2.dim() != 2 or x2.shape[1] != k or k % 32 or n % 16 or not x2.numel() or not nvfp4_supported(x2.device):
        return None
    t = packed.tensors
    cache = cache if cache is not None else LayoutCache()
    try:
        b_codes, b_blocked = cache.get("nvfp4_blocked", (t["qweight"], t["block_scale"]),
                                       lambda: nvfp4_weight_operands(packed))
        codes, bs8, s_t = nvfp4_encode(x2)
        return nvfp4_scaled_mm(as_fp4x2(pack_nibbles(codes)), to_blocked(bs8), s_t, b_codes, b_blocked,
                               t["tensor_scale"], x2.dtype)
    except (RuntimeError, TypeError) as e:
        _give_up("scaled_mm_fp4", x2.device, e, signature_mismatch=isinstance(e, TypeError))
        return None


def _give_up(name: str, device, err: BaseException, signature_mismatch: bool = False) -> None:
    """Turn kernel ``name`` off on ``device`` if ``err`` says it has no kernel there (or, with
    ``signature_mismatch``, a ``TypeError``: this torch's op takes other arguments); else re-raise ``err``."""
    if not (signature_mismatch or is_unsupported(err)):
        raise err
    _UNSUPPORTED.add((name, torch.device(device)))
    warnings.warn(f"mpsearch: the {name} kernel failed on {device} ({str(err).splitlines()[0]}); the reference "
                  "arithmetic runs instead from now on", RuntimeWarning, stacklevel=3)


__all__ = ["int_mm_padded", "int8_linear", "int8_patches", "tinygemm_layout", "int4_linear", "nvfp4_supported",
           "nvfp4_weight_operands", "nvfp4_scaled_mm", "nvfp4_linear"]
