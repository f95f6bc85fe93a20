"""INT8 W8A8 on the CPU through torch._int_mm: bit for bit the reference (the float-GEMM path), chosen by a
measurement or by the user, and an unknown choice is a one-line error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.errors import UsageError
from mpsearch.formats import get_format
from mpsearch.runtime import kernels
from mpsearch.runtime.kernels.cpu import int8, workspace
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear

INT8 = get_format("int8")


def _weight(out, inp, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * torch.rand(out, 1, generator=g)


@pytest.fixture(params=["workspace", "tiny-blocks", "fresh"])
def temporaries(request, monkeypatch):
    """Codes and accumulators in the workspace (real blocks, and blocks of a few rows), or allocated afresh."""
    if request.param == "tiny-blocks":
        monkeypatch.setattr(workspace, "CHUNK", 64)
    if request.param == "fresh":
        with workspace.workspace_off():
            yield
    else:
        yield


@pytest.mark.parametrize("m,k,n", [(5, 64, 24), (40, 36, 4), (17, 200, 13), (1, 1, 8), (300, 1300, 7)])
def test_linear_is_the_reference_bit_for_bit(int_mm, temporaries, m, k, n):
    packed = INT8.quantize(_weight(n, k))
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(m, k) * 3).to(dtype)
        x[0] = 0  # a row whose scale is 0
        y = int8.int8_linear_cpu(x, packed, cache=kernels.LayoutCache())
        assert y.dtype == dtype and torch.equal(y, INT8.matmul(x, packed, quantize_activations=True))


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation", [
    (12, 10, 3, 2, 1, 1), (8, 5, 3, 1, 2, 2), (16, 9, 1, 1, 0, 1), (4, 6, 3, 1, 1, 1), (7, 3, (3, 1), 1, (1, 0), 1),
])
def test_conv_patches_are_the_reference_bit_for_bit(int_mm, temporaries, cin, cout, k, stride, padding, dilation):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation)
    packed = INT8.quantize(conv.weight.detach())
    args = (conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    for x in (torch.randn(2, cin, 9, 7) * 2, torch.randn(2, 9, 7, cin).permute(0, 3, 1, 2)):  # NCHW, strided
        x[1, :, 2:4] = 0
        y, oh, ow = int8.int8_patches_cpu(x, packed, *args, cache=kernels.LayoutCache())
        ref, rh, rw = INT8.matmul_patches(x, packed, *args, quantize_activations=True)
        assert (oh, ow) == (rh, rw) and torch.equal(y, ref)


def test_quantized_modules_give_the_same_numbers_on_either_path():
    lin, conv = nn.Linear(96, 40), nn.Conv2d(6, 8, 3, padding=1)
    ql = QuantLinear(INT8.quantize(lin.weight.detach()), lin.bias)
    qc = QuantConv2d(conv, INT8.quantize(conv.weight.detach()), conv.bias)
    x, img = torch.randn(3, 5, 96), torch.randn(2, 6, 8, 8)
    out = {}
    for path in ("float", "int_mm"):
        with kernels.using_kernels(f"int8={path}"):
            out[path] = (ql(x), qc(img))
    assert all(torch.equal(a, b) for a, b in zip(out["float"], out["int_mm"]))


def test_float_path_declines_so_the_reference_runs():
    was = int8._STATE["path"]
    with kernels.using_kernels("int8=float"):
        packed = INT8.quantize(_weight(4, 16))
        assert int8.int8_linear_cpu(torch.randn(3, 16), packed) is None
        assert int8.int8_patches_cpu(torch.randn(1, 16, 2, 2), INT8.quantize(_weight(4, 16).view(4, 16, 1, 1)),
                                         (1, 1), (1, 1), (0, 0), (1, 1)) is None
    assert int8._STATE["path"] == was  # restored after the block


def test_auto_measures_once_and_a_bad_choice_is_a_one_line_error(monkeypatch):
    measured = int8._STATE["measured"]
    try:
        int8._STATE["measured"] = None
        first = int8.int_mm_is_faster()
        assert isinstance(first, bool) and int8._STATE["measured"] is first
        assert int8.int_mm_is_faster() is first  # not measured again
    finally:
        int8._STATE["measured"] = measured
    with pytest.raises(UsageError, match="unknown CPU int8 path 'fast'"):
        int8._CHOICE.path("fast")
    with pytest.raises(UsageError, match="select_kernels: 'int8=fast' is not a kernel setting"):
        kernels.select_kernels("int8=fast")
    was = int8._STATE["path"]
    try:
        int8._STATE["path"] = None
        monkeypatch.setenv("MPSEARCH_KERNELS", "int8=vnni")
        with pytest.raises(UsageError, match="MPSEARCH_KERNELS: 'int8=vnni'.*int8=auto.int_mm.float"):
            int8.int8_linear_cpu(torch.randn(2, 8), INT8.quantize(_weight(3, 8)))
        monkeypatch.setenv("MPSEARCH_KERNELS", "int8=float")
        assert kernels.kernel_settings()["int8"] == "float"
    finally:
        int8._STATE["path"] = was
