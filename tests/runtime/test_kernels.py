"""The kernel registry behind the quantized modules, and the layout conversions of the GPU kernels, on the CPU.

The CUDA kernels themselves are checked against the CPU reference in ``test_kernels_gpu.py`` (``-m gpu``);
here: dispatch and fallback, the int8 kernel's arithmetic (it runs on the CPU too, through the CPU
``torch._int_mm``), that the INT4 -> tinygemm and NVFP4 -> ``_scaled_mm`` conversions lose nothing (decoded
back with pure torch, and INT4 through torch's CPU tinygemm kernel), and the ``_scaled_mm`` call's shapes on
the meta device.
"""

import importlib
import sys
import types

import pytest
import torch
from torch import nn

from mpsearch.formats import get_format
from mpsearch.formats.nvfp4 import nvfp4_decode, nvfp4_encode
from mpsearch.formats.packing import pack_nibbles, unpack_nibbles
from mpsearch.models import measured_bytes
from mpsearch.runtime import kernels
from mpsearch.runtime.kernels import cuda
from mpsearch.runtime.kernels.cpu import int8
from mpsearch.runtime.kernels.cuda import layouts
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear


def _weight(out, inp, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * torch.rand(out, 1, generator=g)


# ------------------------------------------------------------------------------------------------ registry

def test_cpu_runs_the_reference_bit_for_bit():
    lin = nn.Linear(256, 24)
    x = torch.randn(3, 7, 256)
    for fmt in ("int8", "int4", "nvfp4"):
        f = get_format(fmt)
        packed = f.quantize(lin.weight.detach())
        q = QuantLinear(packed, lin.bias)
        act = f.quantizes_activations
        expect = f.matmul(x.reshape(-1, 256), packed, quantize_activations=act).reshape(3, 7, 24) + lin.bias
        assert torch.equal(q(x), expect)
        # the CPU kernels (int8 on torch._int_mm where it is faster, the 4-bit formats decoded into the
        # workspace) are bit for bit the reference too
        assert kernels.find_kernel("cpu", fmt, act) is not None
        if fmt == "int8":
            assert kernels.find_kernel("cpu", fmt, act) is int8.int8_linear_cpu


@pytest.fixture
def kept_kernels():
    """The registry as it was (the tests below register fakes over int8's real CPU kernels)."""
    before = dict(kernels.KERNELS)
    yield
    kernels.KERNELS.clear()
    kernels.KERNELS.update(before)


def test_a_registered_kernel_runs_and_may_decline(kept_kernels):
    calls = []

    @kernels.register_kernel("cpu", "int8", activations=True)
    def fake(x2, packed, *, cache, dequantized):
        calls.append(x2.shape)
        return None if x2.shape[0] == 1 else torch.full((x2.shape[0], packed.shape[0]), 7.0)

    try:
        lin = nn.Linear(32, 4, bias=False)
        q = QuantLinear(get_format("int8").quantize(lin.weight.detach()), None)
        assert torch.equal(q(torch.randn(2, 32)), torch.full((2, 4), 7.0))
        x1 = torch.randn(1, 32)
        assert torch.equal(q(x1), get_format("int8").matmul(x1, q.packed()))  # declined: the reference
        with kernels.reference_only():
            assert not torch.equal(q(torch.randn(2, 32)), torch.full((2, 4), 7.0))
        assert calls == [(2, 32), (1, 32)]
        assert ("cpu", "int8", True, "linear") in kernels.registered()
    finally:
        kernels.unregister_kernel("cpu", "int8", activations=True)
    assert kernels.find_kernel("cpu", "int8", True) is None
    assert ("cpu", "int8", True, "patches") in kernels.registered()  # only that key was forgotten


def test_register_rejects_unknown_formats_and_ops():
    with pytest.raises(Exception, match="int3"):
        kernels.register_kernel("cpu", "int3", activations=False)
    with pytest.raises(Exception, match="matmul"):
        kernels.register_kernel("cpu", "int8", activations=True, op="matmul")


def test_conv_dispatch_weight_only_and_patches(kept_kernels):
    seen = []

    @kernels.register_kernel("cpu", "int4", activations=False, op="conv")
    def conv_k(x, packed, bias, stride, padding, dilation, *, cache, dequantized):
        seen.append("conv")

    @kernels.register_kernel("cpu", "int8", activations=True, op="patches")
    def patches_k(x, packed, kernel, dilation, padding, stride, *, cache, dequantized):
        seen.append("patches")

    try:
        conv = nn.Conv2d(128, 8, 1)
        img = torch.randn(1, 128, 4, 4)
        for fmt, tag in (("int4", "conv"), ("int8", "patches")):
            f = get_format(fmt)
            q = QuantConv2d(conv, f.quantize(conv.weight.detach()), conv.bias)
            with kernels.reference_only():
                ref = q(img)
            assert torch.equal(q(img), ref)  # the kernel declined (returned None): the same numbers
            assert seen[-1] == tag
    finally:
        kernels.unregister_kernel("cpu", "int4", activations=False, op="conv")
        kernels.unregister_kernel("cpu", "int8", activations=True, op="patches")


def test_layout_cache_is_invisible_to_bytes_and_state_and_cleared_on_move():
    lin = nn.Linear(256, 16)
    q = QuantLinear(get_format("int4").quantize(lin.weight.detach()), lin.bias)
    before, keys = measured_bytes(q), set(q.state_dict())
    built = []
    t = q.packed().tensors
    v1 = q._kernel_cache.get("k", (t["qweight"],), lambda: built.append(1) or torch.zeros(1000))
    v2 = q._kernel_cache.get("k", (t["qweight"],), lambda: built.append(1) or torch.zeros(1000))
    assert v1 is v2 and built == [1] and q._kernel_cache.nbytes == 4000
    assert measured_bytes(q) == before and set(q.state_dict()) == keys
    t["qweight"].add_(0)  # modified in place: a new version, rebuilt
    q._kernel_cache.get("k", (t["qweight"],), lambda: built.append(1) or torch.zeros(1000))
    assert built == [1, 1]
    q.to(torch.float64)
    assert len(q._kernel_cache) == 0
    with torch.inference_mode():  # packed tensors made under inference mode have no version counter
        inf = torch.zeros(4)
    q._kernel_cache.get("k", (inf,), lambda: torch.zeros(1))
    assert q._kernel_cache.get("k", (inf,), lambda: None) is not None
    with kernels.layouts_per_call():
        q._kernel_cache.get("k", (t["qweight"],), lambda: torch.zeros(3))
    assert len(q._kernel_cache) == 0


# -------------------------------------------------------------------------------------------------- int8

@pytest.mark.parametrize("m,k,n", [(5, 64, 24), (40, 36, 4), (17, 200, 13), (1, 8, 8)])
def test_int8_kernel_is_the_reference_bit_for_bit(m, k, n):
    """The CUDA int8 kernel's arithmetic (padding included) on the CPU's ``torch._int_mm``."""
    f = get_format("int8")
    packed = f.quantize(_weight(n, k))
    cache = kernels.LayoutCache()
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(m, k) * 3).to(dtype)
        y = cuda.int8_linear(x, packed, cache=cache)
        assert y.dtype == dtype and torch.equal(y, f.matmul(x, packed, quantize_activations=True))


def test_int8_patches_kernel_is_the_reference_bit_for_bit():
    f = get_format("int8")
    conv = nn.Conv2d(12, 10, 3, padding=1, stride=2)
    packed = f.quantize(conv.weight.detach())
    x = torch.randn(2, 12, 9, 7)
    y, oh, ow = cuda.int8_patches(x, packed, (3, 3), (1, 1), (1, 1), (2, 2), cache=kernels.LayoutCache())
    ref, rh, rw = f.matmul_patches(x, packed, (3, 3), (1, 1), (1, 1), (2, 2), quantize_activations=True)
    assert (oh, ow) == (rh, rw) and torch.equal(y, ref)


def test_int_mm_padded_is_exact():
    g = torch.Generator().manual_seed(1)
    qx = torch.randint(-127, 128, (3, 21), generator=g, dtype=torch.int8)
    qw = torch.randint(-127, 128, (5, 21), generator=g, dtype=torch.int8)
    assert torch.equal(cuda.int_mm_padded(qx, qw), qx.to(torch.int32) @ qw.to(torch.int32).t())


# -------------------------------------------------------------------------------------------------- int4

@pytest.mark.parametrize("fmt", ["int4", "int4-g64", "int4-g32"])
def test_int4_to_tinygemm_is_lossless_with_exact_scales(fmt):
    f = get_format(fmt)
    w = _weight(24, 256)
    w[3, :f.group] = 0.5  # a constant group (scale 0, codes 8)
    packed = f.quantize(w)
    t = packed.tensors
    codes = layouts.swap_nibbles(t["qweight"])
    assert torch.equal(codes >> 4, t["qweight"] & 0x0F)  # element 2k: tinygemm's high nibble, our low one
    for dtype in (torch.float32, torch.float16):  # float16 scales widen exactly
        sz = layouts.tinygemm_scales_and_zeros(t["scale"], t["zero"], dtype)
        assert sz.shape == (256 // f.group, 24, 2)
        assert torch.equal(layouts.tinygemm_decode(codes, sz, f.group), f.dequantize(packed))


def test_int4_tinygemm_bfloat16_scales_round_within_the_stated_bound():
    f = get_format("int4")
    packed = f.quantize(_weight(16, 512, seed=3))
    t = packed.tensors
    sz = layouts.tinygemm_scales_and_zeros(t["scale"], t["zero"], torch.bfloat16)
    got = layouts.tinygemm_decode(layouts.swap_nibbles(t["qweight"]), sz, 128)
    # exactly our formula with scale and zero rounded to bfloat16
    q = unpack_nibbles(t["qweight"]).reshape(16, 4, 128).float()
    sb, zb = t["scale"].to(torch.bfloat16).float()[..., None], t["zero"].to(torch.bfloat16).float()[..., None]
    assert torch.equal(got, ((q - 8) * sb + zb).reshape(16, 512))
    bound = (2.0 ** -8) * (8 * t["scale"].float().abs() + t["zero"].float().abs())
    err = (got - f.dequantize(packed)).abs().reshape(16, 4, 128).amax(-1)
    assert (err <= bound + 1e-12).all()


def test_int4_convention_through_torch_cpu_tinygemm():
    """torch's CPU tinygemm (same scales_and_zeros convention) reproduces our dequantized weight exactly."""
    f = get_format("int4")
    packed = f.quantize(_weight(16, 256, seed=5))
    t = packed.tensors
    wp = torch._convert_weight_to_int4pack_for_cpu(layouts.tinygemm_cpu_weight(t["qweight"]), 2)
    sz = layouts.tinygemm_scales_and_zeros(t["scale"], t["zero"], torch.float32)
    w = torch._weight_int4pack_mm_for_cpu(torch.eye(256), wp, 128, sz).t()
    assert torch.equal(w, f.dequantize(packed))


def test_inner_k_tiles():
    assert [layouts.inner_k_tiles(k) for k in (1024, 128, 64, 96, 32, 48)] == [8, 8, 4, 2, 2, 0]


# ------------------------------------------------------------------------------------------------- nvfp4

@pytest.fixture(scope="module")
def cq():
    """torch's own fp4 / blocked-scale helpers (torch.testing._internal.common_quantized). Its one import of
    torch's test utilities (which need ``expecttest``) is satisfied by a stand-in holding the five flags it
    reads, when the real one does not import."""
    name = "torch.testing._internal.common_utils"
    try:
        return importlib.import_module("torch.testing._internal.common_quantized")
    except ImportError:
        pass
    saved = sys.modules.get(name)
    stub = types.ModuleType(name)
    stub.TEST_WITH_TSAN = stub.IS_PPC = stub.IS_MACOS = stub.IS_WINDOWS = stub.IS_ARM64 = False
    sys.modules[name] = stub
    try:
        sys.modules.pop("torch.testing._internal.common_quantized", None)
        return importlib.import_module("torch.testing._internal.common_quantized")
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved


def test_nvfp4_codes_are_torch_float4_e2m1fn_x2(cq):
    """torch's fp4 packing (element 2k in the low nibble) and E2M1 encoding give our bytes for our values."""
    x = torch.randn(8, 64) * 3
    codes, bs8, s_t = nvfp4_encode(x)
    grid = nvfp4_decode(codes, torch.ones_like(bs8, dtype=torch.float32).to(torch.float8_e4m3fn),
                        torch.ones(1))  # the E2M1 values themselves
    ours = pack_nibbles(codes)
    theirs = cq._bfloat16_to_float4_e2m1fn_x2(grid.to(torch.bfloat16))
    assert theirs.dtype == torch.float4_e2m1fn_x2
    # -0.0 may encode as 0 in torch's converter; compare magnitudes' bytes where the sign is that of a zero
    nonzero = grid != 0
    ours_u, theirs_u = unpack_nibbles(ours), unpack_nibbles(theirs.view(torch.uint8))
    assert torch.equal(ours_u[nonzero], theirs_u[nonzero])
    assert torch.equal(ours_u[~nonzero] & 7, theirs_u[~nonzero] & 7)
    view = layouts.as_fp4x2(ours)
    assert view.data_ptr() == ours.data_ptr() and view.shape == ours.shape


@pytest.mark.parametrize("rows,cols", [(128, 4), (200, 8), (3, 5), (256, 12)])
def test_blocked_scales_match_torch_and_invert(cq, rows, cols):
    s = (torch.rand(rows, cols) * 400).to(torch.float8_e4m3fn)
    blocked = layouts.to_blocked(s)
    assert blocked.numel() == layouts.blocked_numel(rows, cols)
    assert torch.equal(blocked.view(torch.uint8), cq.to_blocked(s.view(torch.uint8)))
    assert torch.equal(layouts.from_blocked(blocked, rows, cols).view(torch.uint8), s.view(torch.uint8))


def test_nvfp4_scaled_mm_operands_have_the_shapes_torch_checks():
    """The exact _scaled_mm call of the CUDA kernel, on meta tensors: shapes, dtypes and scale sizes pass
    torch's own checks; strides are checked here (row-major A, column-major B)."""
    f = get_format("nvfp4")
    m, k, n = 77, 256, 48
    packed = f.quantize(_weight(n, k))
    b_codes, b_blocked = cuda.nvfp4_weight_operands(packed)
    codes, bs8, s_t = nvfp4_encode(torch.randn(m, k))
    a_codes, a_blocked = layouts.as_fp4x2(pack_nibbles(codes)), layouts.to_blocked(bs8)
    assert a_codes.stride() == (k // 2, 1) and b_codes.t().stride() == (1, k // 2)
    meta = [t.to("meta") for t in (a_codes, b_codes.t(), a_blocked, b_blocked)]
    out = torch._scaled_mm(*meta, out_dtype=torch.bfloat16)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16


def test_cuda_kernels_decline_what_they_do_not_take():
    f4, f8 = get_format("int4"), get_format("int8")
    p4 = f4.quantize(_weight(12, 256))  # N % 8 != 0
    assert cuda.int4_linear(torch.randn(3, 256, dtype=torch.bfloat16), p4) is None
    p4 = f4.quantize(_weight(16, 256))
    assert cuda.int4_linear(torch.randn(3, 256), p4) is None  # float32 activations
    assert cuda.nvfp4_linear(torch.randn(3, 256), get_format("nvfp4").quantize(_weight(16, 256))) is None  # cpu
    assert cuda.int8_linear(torch.randn(3, 100), f8.quantize(_weight(16, 256))) is None


def test_tinygemm_layout_shapes_on_meta():
    """The CUDA int4 kernel's layout call passes torch's checks (meta device): int4pack is (N/8, K/(t*16), 32,
    t/2) int32 with t = 8 here, as many bytes as our codes; qScaleAndZeros (K/G, N, 2) bfloat16."""
    p = get_format("int4").quantize(_weight(48, 1024))
    meta = type(p)(p.format, p.shape, p.dtype, {k: v.to("meta") for k, v in p.tensors.items()})
    wpack, sz = cuda.tinygemm_layout(meta)
    assert wpack.shape == (6, 8, 32, 4) and wpack.dtype == torch.int32
    assert wpack.numel() * 4 == p.tensors["qweight"].numel()
    assert sz.shape == (8, 48, 2) and sz.dtype == torch.bfloat16


def test_kernels_are_grouped_by_device_and_format():
    """The CPU kernels live in ``kernels.cpu`` (a module per format, or by what it does), the CUDA ones in
    ``kernels.cuda``; the flat per-mechanism modules are gone and every registered kernel comes from its device's."""
    import importlib.util

    for old in ("cpu_int8", "cpu_nvfp4", "cpu_decode", "cpu_jit", "cpu_compiled", "workspace", "layouts"):
        assert importlib.util.find_spec(f"mpsearch.runtime.kernels.{old}") is None, old
    for new in ("cpu.int8", "cpu.nvfp4", "cpu.decode", "cpu.loops", "cpu.compiled", "cpu.workspace", "cuda.layouts"):
        assert importlib.util.find_spec(f"mpsearch.runtime.kernels.{new}") is not None, new
    for device, fmt, act, op in kernels.registered():
        fn = kernels.find_kernel(device, fmt, act, op)
        assert fn.__module__.startswith(f"mpsearch.runtime.kernels.{device}"), (device, fmt, act, op, fn.__module__)
