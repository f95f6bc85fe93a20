"""The CUDA kernels against the CPU reference (``pytest -m gpu`` on a machine with CUDA).

Tolerances (``y_exact``: the float64 product of the operands as the format defines them, i.e. the dequantized
weight and, for W4A4, the fake-quantized activation; ``S = |x| @ |w|.T``, the sum of absolute products):

* int8 (``torch._int_mm``): bit for bit the CPU reference, linear and conv, any M, K, N (padding included),
  float32 / bfloat16 / float16 activations, module outputs with bias included.
* int4 (tinygemm, bfloat16 activations): ``|y - y_exact| <= 2^-7 |y_exact| + |x| @ (2^-6 (8 |scale| + |zero|)).T``:
  scale and zero rounded to bfloat16, the weight dequantized and multiplied in bfloat16, float32 sums, a
  bfloat16 output.
* nvfp4 (``torch._scaled_mm``, compute capability 10.x): the activation codes are bit for bit the CPU's;
  ``|y - y_exact| <= 2^-7 |y_exact| + 2^-11 S`` (exact E2M1 x E4M3 products, float32 sums in the GEMM's
  order, a bfloat16 result scaled by both tensor scales, then rounded to the activation dtype).
* nvfp4 elsewhere (reference on the device: fake-quantized activations and the dequantized weight, each
  rounded to bfloat16, and a bfloat16 GEMM): codes bit for bit; ``|y - y_exact| <= 2^-7 |y_exact| + 2^-7 S``
  (two input roundings of 2^-9 S each, float32 sums, a bfloat16 output); weight-only:
  ``2^-7 |y_exact| + 2^-8 S``.
Each bound holds in the worst case for K <= 8192 (float32 sums: K * 2^-24 S <= 2^-11 S), not only on average.
"""

import pytest
import torch
from torch import nn

from mpsearch.formats import get_format
from mpsearch.formats.nvfp4 import nvfp4_decode, nvfp4_encode
from mpsearch.models import measured_bytes
from mpsearch.runtime import kernels
from mpsearch.runtime.kernels import cuda
from mpsearch.runtime.kernels.cuda import layouts
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear

pytestmark = pytest.mark.gpu
DEV = "cuda"


def _on(packed, device):
    return type(packed)(packed.format, packed.shape, packed.dtype, {k: v.to(device) for k, v in packed.tensors.items()})


def _weight(out, inp, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * torch.rand(out, 1, generator=g)


def _x(m, k, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * 2).to(dtype)


def _within(y, y_exact, rel, absolute):
    err = (y.double().cpu() - y_exact).abs()
    bound = rel * y_exact.abs() + absolute
    worst = (err - bound).max().item()
    assert worst <= 0, f"max error over the bound by {worst:.3g} (max error {err.max().item():.3g})"


# -------------------------------------------------------------------------------------------------- int8

@pytest.mark.parametrize("m,k,n", [(1, 64, 24), (5, 320, 640), (77, 2048, 320), (40, 36, 4), (300, 1280, 1280),
                                   (4096, 3072, 3072), (17, 5120, 1280)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_linear_bit_for_bit(m, k, n, dtype):
    f = get_format("int8")
    packed = f.quantize(_weight(n, k))
    x = _x(m, k, dtype)
    y = cuda.int8_linear(x.to(DEV), _on(packed, DEV), cache=kernels.LayoutCache())
    assert y is not None, "the _int_mm kernel declined"
    assert torch.equal(y.cpu(), f.matmul(x, packed, quantize_activations=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_conv_and_modules_bit_for_bit(dtype):
    f = get_format("int8")
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 40, 3, padding=1, stride=2).to(dtype)
    qc = QuantConv2d(conv, f.quantize(conv.weight.detach()), conv.bias)
    lin = nn.Linear(320, 640).to(dtype)
    ql = QuantLinear(f.quantize(lin.weight.detach()), lin.bias)
    img, x = torch.randn(2, 64, 33, 31).to(dtype), torch.randn(2, 77, 320).to(dtype)
    ref_c, ref_l = qc(img), ql(x)
    qc.to(DEV), ql.to(DEV)
    assert torch.equal(qc(img.to(DEV)).cpu(), ref_c)
    assert torch.equal(ql(x.to(DEV)).cpu(), ref_l)


# -------------------------------------------------------------------------------------------------- int4

def _int4_bound(x, packed):
    f = get_format(packed.format)
    n, k = packed.shape
    t = packed.tensors
    per_group = 2.0 ** -6 * (8 * t["scale"].double().abs() + t["zero"].double().abs())  # (N, K/G)
    per_elem = per_group.repeat_interleave(f.group, dim=1)
    return x.double().abs() @ per_elem.t()


@pytest.mark.parametrize("fmt", ["int4", "int4-g64", "int4-g32"])
@pytest.mark.parametrize("m,k,n", [(1, 256, 8), (5, 1280, 640), (77, 3072, 320), (4096, 3072, 3072)])
def test_int4_tinygemm_within_tolerance(fmt, m, k, n):
    f = get_format(fmt)
    packed = f.quantize(_weight(n, k))  # float32: dequantize() returns the exact values
    x = _x(m, k, torch.bfloat16)
    cache = kernels.LayoutCache()
    y = cuda.int4_linear(x.to(DEV), _on(packed, DEV), cache=cache)
    assert y is not None and y.dtype == torch.bfloat16, "tinygemm declined"
    exact = x.double() @ f.dequantize(packed).double().t()
    _within(y, exact, 2.0 ** -7, _int4_bound(x, packed))
    _within(f.matmul(x, packed), exact, 2.0 ** -7, _int4_bound(x, packed))  # the reference meets it too
    assert len(cache) == 1 and cache.nbytes == packed.nbytes  # int4pack + bf16 scales: the packed size again


def test_int4_layout_on_device_matches_the_cpu_conversion():
    f = get_format("int4")
    packed = f.quantize(_weight(64, 512))
    wpack, sz = cuda.tinygemm_layout(_on(packed, DEV))
    t = packed.tensors
    assert torch.equal(sz.cpu(), layouts.tinygemm_scales_and_zeros(t["scale"], t["zero"]))
    # decode the int4pack through the kernel with an identity: exactly the bf16-scaled weight, rounded to bf16
    eye = torch.eye(512, dtype=torch.bfloat16, device=DEV)
    w = torch._weight_int4pack_mm(eye, wpack, 128, sz).t().float().cpu()
    ref = layouts.tinygemm_decode(layouts.swap_nibbles(t["qweight"]), sz.cpu(), 128)
    per_group = 2.0 ** -7 * (8 * t["scale"].double().abs() + t["zero"].double().abs())
    _within(w, ref.double(), 2.0 ** -7, per_group.repeat_interleave(128, dim=1))


def test_int4_module_caches_layout_off_the_books():
    f = get_format("int4")
    lin = nn.Linear(1024, 256).to(torch.bfloat16)
    q = QuantLinear(f.quantize(lin.weight.detach()), lin.bias).to(DEV)
    before, keys = measured_bytes(q), set(q.state_dict())
    q(torch.randn(3, 1024, dtype=torch.bfloat16, device=DEV))
    assert q._kernel_cache.nbytes > 0
    assert measured_bytes(q) == before and set(q.state_dict()) == keys
    q.to("cpu")
    assert len(q._kernel_cache) == 0


# ------------------------------------------------------------------------------------------------- nvfp4

def test_nvfp4_activation_codes_bit_for_bit():
    x = _x(300, 3072, torch.bfloat16)
    cpu = nvfp4_encode(x)
    gpu = nvfp4_encode(x.to(DEV))
    for a, b in zip(cpu, gpu):
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                           (b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b).cpu())


def _nvfp4_exact(x, packed):
    f = get_format("nvfp4")
    codes, bs8, s_t = nvfp4_encode(x)
    xq = nvfp4_decode(codes, bs8, s_t).double()  # each value exact in float32 (E2M1 x E4M3 x s_t)
    w = f.dequantize(packed).double()
    return xq @ w.t(), xq.abs() @ w.abs().t()


@pytest.mark.parametrize("m,k,n", [(1, 256, 48), (77, 3072, 3072), (300, 1280, 640), (4096, 3072, 3072)])
def test_nvfp4_on_cuda_within_tolerance(m, k, n):
    """_scaled_mm on compute capability 10.x; elsewhere the reference on the device (the weight-only GEMM)."""
    f = get_format("nvfp4")
    packed = f.quantize(_weight(n, k))
    x = _x(m, k, torch.bfloat16)
    y = kernels.linear(x.to(DEV), _on(packed, DEV), activations=True, cache=kernels.LayoutCache())
    if cuda.nvfp4_supported(DEV):
        assert cuda.nvfp4_linear(x.to(DEV), _on(packed, DEV)) is not None, "_scaled_mm declined on sm 10.x"
    exact, s = _nvfp4_exact(x, packed)
    _within(y, exact, 2.0 ** -7, (2.0 ** -11 if cuda.nvfp4_supported(DEV) else 2.0 ** -7) * s)


def test_nvfp4_weight_only_on_cuda():
    f = get_format("nvfp4")
    packed = f.quantize(_weight(640, 3072))
    x = _x(77, 3072, torch.bfloat16)
    y = kernels.linear(x.to(DEV), _on(packed, DEV), activations=False)
    w = f.dequantize(packed).double()
    _within(y, x.double() @ w.t(), 2.0 ** -7, 2.0 ** -8 * (x.double().abs() @ w.abs().t()))


def test_nvfp4_blocked_scales_on_device_match_cpu():
    f = get_format("nvfp4")
    packed = f.quantize(_weight(200, 512))
    codes, blocked = cuda.nvfp4_weight_operands(_on(packed, DEV))
    assert torch.equal(blocked.view(torch.uint8).cpu(), layouts.to_blocked(packed.tensors["block_scale"]).view(torch.uint8))
    assert codes.dtype == torch.float4_e2m1fn_x2
