"""The numba loops (``mpsearch.runtime.kernels.cpu.loops``) equal the torch kernels they replace, bit for bit:
NVFP4 and INT4 weight decode, NVFP4 activation rows and conv patches (float32 fake quantization and bfloat16 element x block scale), on
shapes, signs, zeros, dead blocks and conv geometries the models hit; the modules give the same outputs with the
loops on and off; calls the loops do not take (non-finite amax, other dtypes) run the torch kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.formats import get_format
from mpsearch.formats.base import abs_max
from mpsearch.formats.nvfp4 import nvfp4_fake_quantize
from mpsearch.formats.patches import im2col, patch_amax, patch_view
from mpsearch.runtime.kernels import using_kernels
from mpsearch.runtime.kernels.cpu import decode, loops, nvfp4
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear

pytestmark = pytest.mark.skipif(loops.numba is None, reason="numba is not installed")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (so -0.0 differs from 0.0, and NaN equals the same NaN)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    view = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[a.dtype]
    return torch.equal(a.view(view), b.view(view))


def _weights(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) ** 4 * 5
    w[0, :32] = 0.0  # all-zero blocks
    w[1, 3] = -0.0
    w[2, :16] *= 1e-12  # a block whose E4M3 scale underflows
    return w


@pytest.mark.parametrize("rows,cols", [(8, 32), (40, 256), (130, 1024)])
def test_nvfp4_weight_decode_float32_and_bfloat16_equal_torch(rows, cols):
    packed = get_format("nvfp4").quantize(_weights(rows, cols, rows))
    for dtype, tensor_scale in ((torch.float32, True), (torch.float32, False), (torch.bfloat16, False)):
        with using_kernels("jit=off"):
            ref = decode.decode_into(packed, torch.empty(rows, cols, dtype=dtype), tensor_scale=tensor_scale)
        out = decode.decode_into(packed, torch.full((rows, cols), 7.0, dtype=dtype), tensor_scale=tensor_scale)
        assert same_bits(out, ref), (dtype, tensor_scale)
    # and the float32 decode is the format's own dequantize
    assert same_bits(decode.decode_into(packed, torch.empty(rows, cols)),
                     get_format("nvfp4").dequantize(packed).reshape(rows, cols))


@pytest.mark.parametrize("name", ["int4", "int4-g64", "int4-g32"])
def test_int4_weight_decode_equals_torch_and_dequantize(name):
    fmt = get_format(name)
    w = _weights(24, 512, 3)
    packed = fmt.quantize(w)
    with using_kernels("jit=off"):
        ref = decode.decode_into(packed, torch.empty(24, 512))
    out = decode.decode_into(packed, torch.empty(24, 512))
    assert same_bits(out, ref)
    assert same_bits(out, fmt.dequantize(packed).reshape(24, 512).float())


def _activations(m, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) ** 3 * 4
    x[0, :16] = 0.0
    if m > 1:
        x[1, 5] = -0.0
        x[1, 16:32] *= 1e-9  # a live tensor with a block whose scale rounds to 0
    return x


@pytest.mark.parametrize("m,k", [(1, 16), (5, 32), (77, 768), (300, 1280)])
def test_nvfp4_rows_equal_the_reference_fake_quantization_and_the_bf16_kernel(m, k):
    x = _activations(m, k, m)
    amax = abs_max(x)
    assert same_bits(loops.nvfp4_rows_into(x, amax, torch.empty(m, k)), nvfp4_fake_quantize(x, amax))
    ref = torch.empty(m, k, dtype=torch.bfloat16)
    with using_kernels("jit=off"):
        nvfp4._activation_into(x, ref, amax)
    assert same_bits(loops.nvfp4_rows_into(x, amax, torch.empty(m, k, dtype=torch.bfloat16)), ref)
    # a larger tensor's amax (the rows of a block of a bigger activation), and in place
    big = amax * 3
    y = x.clone()
    loops.nvfp4_rows_into(y, big, y)
    assert same_bits(y, nvfp4_fake_quantize(x, big))


def test_all_zero_and_tiny_tensors():
    for x in (torch.zeros(4, 32), torch.full((2, 16), 1e-40), -torch.zeros(3, 16)):
        amax = abs_max(x)
        assert same_bits(loops.nvfp4_rows_into(x, amax, torch.empty_like(x)), nvfp4_fake_quantize(x, amax))


@pytest.mark.parametrize("shape,k,stride,dilation,padding", [
    ((2, 32, 8, 8), 3, 1, 1, 1),   # the UNet's 3x3 convs
    ((1, 16, 9, 7), 3, 2, 1, 1),   # a strided downsampler on an odd-sized input
    ((2, 16, 8, 8), 3, 1, 2, 2),   # dilated
    ((1, 48, 5, 5), 1, 1, 1, 0),   # 1x1
    ((1, 16, 6, 6), (3, 1), (1, 2), 1, (1, 0)),  # non-square kernel and stride
])
def test_nvfp4_patches_read_from_the_input_equal_im2col_then_quantize(shape, k, stride, dilation, padding):
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    k, stride, dilation, padding = pair(k), pair(stride), pair(dilation), pair(padding)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 2
    x[0, :2] = 0.0
    view, xp, oh, ow = patch_view(x, k, dilation, padding, stride)
    cols, _, _ = im2col(x, k, dilation, padding, stride)
    amax = patch_amax(xp, k, stride, dilation).amax()
    got = loops.nvfp4_patches_into(xp.contiguous(), k, stride, dilation, oh, ow, amax, torch.empty(cols.shape))
    assert same_bits(got, nvfp4_fake_quantize(cols, amax))
    ref = torch.empty(cols.shape, dtype=torch.bfloat16)
    with using_kernels("jit=off"):
        nvfp4._activation_into(cols, ref, amax)
    got = loops.nvfp4_patches_into(xp, k, stride, dilation, oh, ow, amax, torch.empty(cols.shape, dtype=torch.bfloat16))
    assert same_bits(got, ref)


@pytest.mark.parametrize("path", ["float", "bf16"])
@pytest.mark.parametrize("fmt", ["nvfp4", "int4", "int4-g32"])
def test_modules_give_the_same_outputs_with_the_loops_on_and_off(path, fmt, monkeypatch):
    ran = []
    for name in ("nvfp4_decode_into", "int4_decode_into", "nvfp4_rows_into", "nvfp4_patches_into"):
        fn = getattr(loops, name)
        monkeypatch.setattr(loops, name, lambda *a, _fn=fn, _n=name: ran.append(_n) or _fn(*a))
    torch.manual_seed(0)
    lin, conv = nn.Linear(256, 40), nn.Conv2d(128, 24, 3, padding=1)
    x_lin, x_conv = torch.randn(2, 9, 256), torch.randn(2, 128, 8, 8)
    q_lin = QuantLinear(get_format(fmt).quantize(lin.weight.detach()), lin.bias)  # nvfp4: W4A4
    q_conv = QuantConv2d(conv, get_format(fmt).quantize(conv.weight.detach()), conv.bias)
    with torch.inference_mode(), using_kernels(f"nvfp4={path}"):
        on = q_lin(x_lin), q_conv(x_conv)
        with using_kernels("jit=off"):
            off = q_lin(x_lin), q_conv(x_conv)
    for a, b in zip(on, off):
        assert same_bits(a, b)
    assert set(ran) == ({"nvfp4_decode_into", "nvfp4_rows_into", "nvfp4_patches_into"} if fmt == "nvfp4"
                        else {"int4_decode_into"})


def test_calls_the_loops_do_not_take_run_the_torch_kernels(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the numba loop ran")

    monkeypatch.setattr(loops, "nvfp4_rows_into", boom)
    x = torch.randn(4, 32)
    x[0, 0] = float("inf")  # a non-finite amax: the torch kernel's arithmetic, whatever it gives
    dst = torch.empty(4, 32)
    decode._quantized_rows_into(x, dst, abs_max(x))
    x16 = torch.randn(4, 32).half()  # another dtype
    out = torch.empty(4, 32, dtype=torch.half)
    decode._quantized_rows_into(x16, out, abs_max(x16))
    assert same_bits(out, nvfp4_fake_quantize(x16, abs_max(x16)).half())
    with using_kernels("jit=off"):
        assert not loops.takes(x)
    assert loops.takes(x) and not loops.takes(x.t()) and not loops.takes(x.requires_grad_())


def test_a_forked_child_runs_the_torch_loops():
    import os

    x = torch.randn(8, 32)
    loops.nvfp4_rows_into(x, abs_max(x), torch.empty(8, 32))  # the parent has run a parallel loop
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no parallel loop (GNU OpenMP would terminate it), the same bits
        ok = not loops.jit_enabled()
        dst = torch.empty(8, 32)
        decode._quantized_rows_into(x, dst, abs_max(x))
        ok = ok and same_bits(dst, nvfp4_fake_quantize(x, abs_max(x)))
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1"
    assert loops.jit_enabled()


def test_no_writable_cache_compiles_per_process_instead_of_failing(monkeypatch):
    calls = []

    def njit(cache, **options):
        calls.append(cache)
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file")
        return loops.numba.njit(cache=False, **options)

    monkeypatch.setattr(loops, "njit", njit)

    def double(a):
        return a * 2

    f = loops._njit()(double)
    assert calls == [True, False] and f(21) == 42
