"""The 4-bit CPU kernels that decode into the workspace: bit for bit the formats' reference, block boundaries
included; they step aside where autograd could keep their temporaries; the workspace is reused, bounded and
releasable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.formats import get_format
from mpsearch.formats.nvfp4 import nvfp4_fake_quantize
from mpsearch.runtime import kernels
from mpsearch.runtime.kernels.cpu import decode, workspace
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear

FORMATS = ["int4", "int4-g64", "int4-g32", "nvfp4"]


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g)


@pytest.fixture(params=[workspace.CHUNK, 256], ids=["chunk", "tiny-blocks"])
def blocks(request, monkeypatch):
    """Run with the real block size and with blocks of a few rows (every boundary case at small sizes)."""
    monkeypatch.setattr(workspace, "CHUNK", request.param)
    yield request.param


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_into_is_dequantize(blocks, fmt):
    f = get_format(fmt)
    w = _rand(37, 256, seed=1)
    w[3, :128] = 0  # an all-zero group / block
    packed = f.quantize(w)
    out = torch.full((37, 256), float("nan"))
    assert torch.equal(decode.decode_into(packed, out), f.dequantize(packed))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_is_the_reference_bit_for_bit(blocks, fmt, dtype):
    f = get_format(fmt)
    packed = f.quantize(_rand(24, 128, seed=2).to(dtype))
    x = (_rand(19, 128, seed=3) * 4).to(dtype)
    for act in ([False, True] if f.quantizes_activations else [False]):
        with torch.inference_mode():
            y = kernels.linear(x, packed, activations=act)
            with kernels.reference_only():
                ref = kernels.linear(x, packed, activations=act)
        assert kernels.find_kernel("cpu", fmt, act) is not None
        assert y.dtype == ref.dtype and torch.equal(y, ref), (fmt, act)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation,hw", [
    (16, 8, 3, 1, 1, 1, (9, 11)), (32, 5, 3, 2, 1, 1, (10, 7)), (16, 4, 3, 1, 2, 2, (8, 8)),
    (128, 6, 1, 1, 0, 1, (5, 3)), (32, 3, (3, 1), 1, (1, 0), 1, (6, 6)),
])
def test_conv_is_the_reference_bit_for_bit(blocks, fmt, cin, cout, k, stride, padding, dilation, hw):
    f = get_format(fmt)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation)
    if f.why_ineligible(conv.weight.shape):
        pytest.skip(f.why_ineligible(conv.weight.shape))
    packed = f.quantize(conv.weight.detach())
    x = torch.randn(2, cin, *hw) * 2
    x[1, :, 0] = -5.0  # the tensor's amax at a pixel some patches see and others do not
    args = (conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    with torch.inference_mode():
        y = kernels.conv(x, packed, conv.bias, conv.stride, conv.padding, conv.dilation)
        with kernels.reference_only():
            ref = kernels.conv(x, packed, conv.bias, conv.stride, conv.padding, conv.dilation)
        assert torch.equal(y, ref)
        if f.quantizes_activations:
            got = kernels.patches(x, packed, *args, activations=True)
            with kernels.reference_only():
                want = kernels.patches(x, packed, *args, activations=True)
            assert got[1:] == want[1:] and torch.equal(got[0], want[0])


@pytest.mark.parametrize("fmt", ["int4", "nvfp4"])
def test_modules_match_the_reference_and_leave_grad_passes_to_it(fmt):
    f = get_format(fmt)
    lin = nn.Linear(128, 16)
    q = QuantLinear.from_module(lin, f.quantize(lin.weight.detach()))
    conv = nn.Conv2d(16, 8, 3, padding=1)
    qc = QuantConv2d.from_module(conv, f.quantize(conv.weight.detach())) if not f.why_ineligible(
        conv.weight.shape) else None
    x = torch.randn(3, 128)
    xc = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        y, yc = q(x), qc(xc) if qc is not None else None
        with kernels.reference_only():
            assert torch.equal(y, q(x))
            assert qc is None or torch.equal(yc, qc(xc))
    # a grad-recording pass: the kernel steps aside (the workspace would be overwritten under autograd)
    xg = x.clone().requires_grad_(True)
    assert decode._linear(f.quantizes_activations)(xg, q.packed(), cache=None, dequantized=None) is None
    q(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_fake_quantize_into_out_and_in_place():
    x = _rand(20, 64, seed=5) * 3
    want = nvfp4_fake_quantize(x)
    out = torch.empty_like(x)
    assert nvfp4_fake_quantize(x, out=out) is out and torch.equal(out, want)
    y = x.clone()
    nvfp4_fake_quantize(y, out=y)
    assert torch.equal(y, want)


def test_workspace_is_reused_bounded_and_released():
    workspace.release_workspace()
    a = workspace.scratch("t", (10, 10), torch.float32, "cpu")
    b = workspace.scratch("t", (5, 4), torch.float32, "cpu")
    assert b.data_ptr() == a.data_ptr() and workspace.workspace_bytes() == 400
    workspace.scratch("t", (30, 10), torch.float32, "cpu")  # grows, the smaller one freed
    assert workspace.workspace_bytes() == 1200
    with workspace.workspace_off():
        c = workspace.scratch("t", (3,), torch.float32, "cpu")
        assert not workspace.reusable(torch.zeros(1))
    assert c.data_ptr() != a.data_ptr()
    with torch.inference_mode():  # a buffer grown in inference mode is usable outside it
        workspace.scratch("u", (4,), torch.float32, "cpu")
    workspace.scratch("u", (4,), torch.float32, "cpu").add_(1)
    workspace.release_workspace()
    assert workspace.workspace_bytes() == 0


def test_an_all_zero_activation_keeps_the_references_zero_signs():
    f = get_format("nvfp4")
    packed = f.quantize(_rand(8, 32, seed=9))
    x = torch.zeros(3, 32)
    x[1, ::3] = -0.0
    conv_x = torch.zeros(1, 16, 4, 4)
    conv_x[0, 1] = -0.0
    conv_packed = f.quantize(_rand(4, 16, 3, 3, seed=10))
    with torch.inference_mode():
        got = kernels.linear(x, packed, activations=True)
        pg = kernels.patches(conv_x, conv_packed, (3, 3), (1, 1), (1, 1), (1, 1), activations=True)[0]
        with kernels.reference_only():
            want = kernels.linear(x, packed, activations=True)
            pw = kernels.patches(conv_x, conv_packed, (3, 3), (1, 1), (1, 1), (1, 1), activations=True)[0]
    assert torch.equal(got.signbit(), want.signbit()) and torch.equal(got, want)
    assert torch.equal(pg.signbit(), pw.signbit()) and torch.equal(pg, pw)


def test_amin_amax_is_aminmax():
    from mpsearch.formats.base import amin_amax

    x = torch.randn(5, 7, 9)
    x[0, 0, :] = float("nan")
    for dim in (0, 1, 2):
        mn, mx = amin_amax(x, dim)
        want = torch.aminmax(x, dim=dim)
        assert torch.allclose(mx, want.max, rtol=0, atol=0, equal_nan=True)
        assert torch.allclose(mn, want.min, rtol=0, atol=0, equal_nan=True)
