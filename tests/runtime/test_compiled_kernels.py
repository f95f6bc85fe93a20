"""The optional compiled CPU kernels (torch.compile): bit for bit the formats' reference arithmetic, on and off
as asked. Compiling takes tens of seconds per function on a 2-core CPU, so the cases are few and shared."""

import pytest
import torch
from torch import nn

from mpsearch.formats import get_format
from mpsearch.runtime.kernels import find_kernel, reference_only, using_kernels
from mpsearch.runtime.kernels.cpu import int8
from mpsearch.runtime.kernels.cpu.compiled import compiled_cpu_kernels
from mpsearch.runtime.qmodules import quantized_module


def _same(a, b):
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@pytest.mark.parametrize("fmt", ["nvfp4", "int4", "int4-g64", "int8"])
def test_compiled_kernels_match_the_reference_bit_for_bit(fmt, int_mm):
    torch.manual_seed(0)
    act = get_format(fmt).quantizes_activations
    before = find_kernel("cpu", fmt, act, "linear")
    lin = nn.Linear(256, 96)
    conv = nn.Conv2d(128, 48, 3, padding=1)  # 1152 inputs: every group size divides them
    mods = [quantized_module(m, get_format(fmt).quantize(m.weight.detach())) for m in (lin, conv)]
    x = torch.randn(37, 256) * 3
    x[3] = 0  # a row whose int8 scale is 0 (codes 0)
    # another token count and another image size: the same compiled code (dynamic shapes)
    img = torch.randn(2, 128, 9, 7)
    img[1, :, :4] = 0  # patches of zeros only
    calls = [(mods[0], x), (mods[1], img), (mods[0], x[:5]), (mods[1], torch.randn(1, 128, 5, 6))]
    with torch.no_grad():
        with reference_only():
            ref = [m(x) for m, x in calls]
        with compiled_cpu_kernels(), using_kernels("jit=off"):  # numba's loops off: the compiled ones run
            assert find_kernel("cpu", fmt, act, "linear") not in (None, before)
            got = [m(x) for m, x in calls]
        with compiled_cpu_kernels():  # where numba's loops run, the 4-bit formats take them instead
            jit = [m(x) for m, x in calls]
    for r, g, j in zip(ref, got, jit):
        assert _same(r, g) and _same(r, j)
    # off again outside the block: int8's own CPU kernel (torch._int_mm, uncompiled) is back, the others none
    assert find_kernel("cpu", fmt, act, "linear") is before
    assert (before is int8.int8_linear_cpu) == (fmt == "int8")


def test_compiled_kernels_are_off_until_asked_and_can_be_turned_off():
    from mpsearch.runtime.kernels.cpu import nvfp4

    eager = find_kernel("cpu", "nvfp4", True, "patches")
    assert eager is nvfp4.nvfp4_patches_bf16  # the eager kernel (bfloat16 or workspace path) until asked
    compiled_cpu_kernels()
    try:
        assert find_kernel("cpu", "nvfp4", True, "patches") not in (None, eager)
    finally:
        compiled_cpu_kernels(False)
    assert find_kernel("cpu", "nvfp4", True, "patches") is eager  # put back


def test_a_failed_compilation_is_one_line_naming_the_fix(monkeypatch):
    import torch._dynamo.exc as dynamo_exc

    from mpsearch.errors import UsageError
    from mpsearch.runtime.kernels.cpu import compiled

    def broken(fn, **kw):
        def run(*args):
            raise dynamo_exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler found"), None)
        return run
    monkeypatch.setattr(compiled.torch, "compile", broken)
    monkeypatch.setattr(compiled, "_COMPILED", {})
    with pytest.raises(UsageError, match="could not be compiled.*compiled_cpu_kernels\\(False\\)"):
        compiled._activations(torch.randn(4, 32))
