"""NVFP4 W4A4 on the CPU's bfloat16 GEMM: NVFP4 hardware's arithmetic (exact element x block-scale products,
float32 sums rounded to bfloat16 once, then both tensor scales), within its stated tolerance of the reference,
exactly equal to that arithmetic done by hand; chosen by a measurement or by the user; calls it does not take
go to the bit-for-bit kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.errors import UsageError
from mpsearch.formats import get_format
from mpsearch.formats.nvfp4 import nvfp4_decode_packed, nvfp4_encode
from mpsearch.formats.packing import unpack_nibbles
from mpsearch.runtime import kernels
from mpsearch.runtime.kernels.cpu import nvfp4, workspace
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear

NVFP4 = get_format("nvfp4")


@pytest.fixture
def bf16():
    with kernels.using_kernels("nvfp4=bf16"):
        yield


def _by_hand(a2: torch.Tensor, packed) -> torch.Tensor:
    """The hardware's arithmetic from the reference's codes: float64 sums of exact products, rounded to
    float32 (the GEMM's float32 sums differ from these only in the summation order), to bfloat16, times
    both tensor scales."""
    codes, bs, s_a = nvfp4_encode(a2.float())
    grid = torch.tensor((0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0) * 2) * torch.tensor([1.0] * 8 + [-1.0] * 8)
    av = grid[codes.long()].reshape(a2.shape[0], -1, 16) * bs.float()[..., None]
    t = packed.tensors
    wc = unpack_nibbles(t["qweight"])
    wv = grid[wc.long()].reshape(wc.shape[0], -1, 16) * t["block_scale"].float()[..., None]
    y = (av.reshape(a2.shape[0], -1).double() @ wv.reshape(wc.shape[0], -1).double().t()).float()
    return y.bfloat16().float() * (s_a * t["tensor_scale"])


def _tolerance(x2, packed, ref):
    # the bfloat16 rounding of the sum (2^-8 of the value, rounding up to a half ulp each way) and float32
    # summation noise of the dequantized magnitudes
    w = nvfp4_decode_packed(packed.tensors["qweight"], packed.tensors["block_scale"], packed.tensors["tensor_scale"])
    scale = x2.abs().float() @ w.abs().t()
    return ref.abs() * 2.0 ** -8 + scale * 1e-6 + 1e-30


@pytest.mark.parametrize("m,k,n", [(7, 64, 24), (33, 256, 40), (1, 16, 3), (300, 1024, 17)])
def test_linear_is_the_hardware_arithmetic_within_tolerance_of_the_reference(bf16, m, k, n):
    g = torch.Generator().manual_seed(m)
    packed = NVFP4.quantize(torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g))
    x = torch.randn(m, k, generator=g) * 3
    x[0, :16] = 0  # a block whose scale is 0
    y = kernels.linear(x, packed, activations=True)
    with kernels.reference_only():
        ref = kernels.linear(x, packed, activations=True)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert ((y - ref).abs() <= _tolerance(x, packed, ref)).all()
    hand = _by_hand(x, packed)
    assert ((y - hand).abs() <= hand.abs() * 2.0 ** -7 + 1e-30).all()  # at most one bfloat16 step apart


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation", [
    (16, 8, 3, 1, 1, 1), (32, 5, 3, 2, 1, 1), (16, 4, 3, 1, 2, 2), (64, 6, 1, 1, 0, 1),
])
def test_conv_is_the_reference_within_tolerance_and_blocks_do_not_matter(bf16, monkeypatch, cin, cout, k, stride,
                                                                         padding, dilation):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation)
    packed = NVFP4.quantize(conv.weight.detach())
    x = torch.randn(2, cin, 9, 7) * 2
    x[1, :, 0] = -6.0
    args = (conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    with torch.inference_mode():
        y, oh, ow = kernels.patches(x, packed, *args, activations=True)
        monkeypatch.setattr(workspace, "CHUNK", 64)  # a few rows per block: the same numbers
        y2, _, _ = kernels.patches(x, packed, *args, activations=True)
        with kernels.reference_only():
            ref, rh, rw = kernels.patches(x, packed, *args, activations=True)
    assert (oh, ow) == (rh, rw) and torch.equal(y, y2)
    from mpsearch.formats.patches import im2col

    cols, _, _ = im2col(x, *args[:1], conv.dilation, conv.padding, conv.stride)
    assert ((y - ref).abs() <= _tolerance(cols, packed, ref)).all()


def test_modules_weight_only_and_grad_calls_take_the_bit_for_bit_path(bf16):
    lin = nn.Linear(64, 8)
    packed = NVFP4.quantize(lin.weight.detach())
    q = QuantLinear(packed, lin.bias)
    x = torch.randn(5, 64)
    with torch.no_grad():
        y = q(x)
        with kernels.reference_only():
            ref = q(x)
    assert kernels.find_kernel("cpu", "nvfp4", True) is nvfp4.nvfp4_linear_bf16
    assert ((y - ref).abs() <= _tolerance(x, packed, ref - lin.bias) + 1e-6).all()
    # weight-only NVFP4 (activations are not exact in bfloat16): bit for bit the reference
    w_only = kernels.linear(x, packed, activations=False)
    with kernels.reference_only():
        assert torch.equal(w_only, kernels.linear(x, packed, activations=False))
    # a grad-recording call: the reference, with its straight-through gradient
    xg = x.clone().requires_grad_(True)
    out = kernels.linear(xg, packed, activations=True)
    with kernels.reference_only():
        assert torch.equal(out, kernels.linear(xg, packed, activations=True))
    out.sum().backward()
    assert xg.grad is not None
    conv = nn.Conv2d(16, 4, 3, padding=1)
    qc = QuantConv2d(conv, NVFP4.quantize(conv.weight.detach()), conv.bias)
    with torch.no_grad():
        assert qc(torch.randn(1, 16, 5, 5)).shape == (1, 4, 5, 5)


def test_float_path_is_bit_for_bit_and_the_choice_is_measured_once_or_set():
    packed = NVFP4.quantize(torch.randn(8, 32))
    x = torch.randn(3, 32)
    with kernels.using_kernels("nvfp4=float"):
        y = kernels.linear(x, packed, activations=True)
        with kernels.reference_only():
            assert torch.equal(y, kernels.linear(x, packed, activations=True))
    measured = nvfp4._STATE["measured"]
    try:
        nvfp4._STATE["measured"] = None
        first = nvfp4.bf16_is_faster()
        assert isinstance(first, bool) and nvfp4.bf16_is_faster() is first
    finally:
        nvfp4._STATE["measured"] = measured
    with pytest.raises(UsageError, match="unknown CPU nvfp4 path 'fast'"):
        nvfp4._CHOICE.path("fast")
    with pytest.raises(UsageError, match="select_kernels: 'nvfp4=fast' is not a kernel setting"):
        kernels.select_kernels("nvfp4=fast")
    with kernels.using_kernels("nvfp4=float"):
        pass
    assert nvfp4._STATE["path"] is None  # restored


def test_a_bad_environment_choice_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("MPSEARCH_KERNELS", "nvfp4=fastest")
    monkeypatch.setitem(nvfp4._STATE, "path", None)
    with pytest.raises(UsageError, match="MPSEARCH_KERNELS: 'nvfp4=fastest' is not a kernel setting"):
        nvfp4.uses_bf16()
