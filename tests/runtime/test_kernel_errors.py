"""Kernel fallbacks take only "no kernel for this shape/device" errors: out of memory and every other failure
propagate, and never turn a kernel off for the rest of the process."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_dit, tiny_unet

from mpsearch.cache_units import compute_shares
from mpsearch.formats import get_format
from mpsearch.formats.int8 import int8_matmul
from mpsearch.formats.kernel_errors import is_out_of_memory, is_unsupported
from mpsearch.runtime.kernels import LayoutCache, choice, cuda
from mpsearch.runtime.kernels.cpu import int8, loops

UNSUPPORTED = RuntimeError("self.size(0) needs to be greater than 16, but got 4")


def _oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


FAILURES = {
    "oom": _oom,
    "oom-message": lambda: RuntimeError("CUDA error: out of memory"),
    "cpu-allocator": lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
    "unrelated": lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
}


def _raising(exc_factory):
    def op(*a, **k):
        raise exc_factory()
    return op


def _codes(m=4, k=24, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    qx = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    qw = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return qx, qw


def _exact(qx, qw):
    return (qx.to(torch.int64) @ qw.to(torch.int64).t()).to(torch.int32)


def test_classification():
    assert is_out_of_memory(_oom()) and is_out_of_memory(MemoryError()) and not is_unsupported(_oom())
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory")) and not is_unsupported(
        RuntimeError("CUDA error: out of memory"))
    assert is_unsupported(UNSUPPORTED) and not is_out_of_memory(UNSUPPORTED)
    assert is_unsupported(NotImplementedError("Could not run 'aten::_int_mm' with arguments from the 'XPU' backend"))
    assert is_unsupported(RuntimeError("_int_mm_out_cuda not compiled for CUDA 11060"))
    assert not is_unsupported(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_unsupported(ValueError("multiple of 8"))


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_int8_matmul_propagates_real_failures(monkeypatch, failure):
    qx, qw = _codes()
    monkeypatch.setattr(torch, "_int_mm", _raising(FAILURES[failure]))
    with pytest.raises(RuntimeError) as e:
        int8_matmul(qx, qw)
    assert type(e.value) is type(FAILURES[failure]())


def test_int8_matmul_falls_back_bit_exactly_where_int_mm_has_no_kernel(monkeypatch):
    qx, qw = _codes()
    monkeypatch.setattr(torch, "_int_mm", _raising(lambda: UNSUPPORTED))
    out = int8_matmul(qx, qw)
    assert out.dtype == torch.int32 and torch.equal(out, _exact(qx, qw))
    monkeypatch.setattr(torch, "_int_mm", _raising(lambda: NotImplementedError("Could not run 'aten::_int_mm'")))
    assert torch.equal(int8_matmul(qx, qw), _exact(qx, qw))


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_cpu_int8_workspace_product_propagates_real_failures(monkeypatch, failure):
    qx, qw = _codes(k=32)
    sx, scale = torch.ones(qx.shape[0]), torch.ones(qw.shape[0])
    real = torch._int_mm

    def int_mm(*a, **k):
        if "out" in k:  # the workspace product; the reference (int8_matmul) calls the real op
            raise FAILURES[failure]()
        return real(*a, **k)
    monkeypatch.setattr(torch, "_int_mm", int_mm)
    with pytest.raises(RuntimeError):
        int8._product_into(qx, qw, sx, scale, torch.float32, int8.rescale)


def test_cpu_int8_workspace_product_falls_back_where_int_mm_has_no_out_kernel(monkeypatch):
    qx, qw = _codes(k=32)
    sx, scale = torch.full((qx.shape[0],), 0.5), torch.full((qw.shape[0],), 0.25)
    real = torch._int_mm

    def int_mm(*a, **k):
        if "out" in k:
            raise NotImplementedError("Could not run 'aten::_int_mm.out'")
        return real(*a, **k)
    monkeypatch.setattr(torch, "_int_mm", int_mm)
    out = int8._product_into(qx, qw, sx, scale, torch.float32, int8.rescale)
    assert torch.equal(out, int8.rescale(_exact(qx, qw), sx, scale))


def _int8_packed(n=8, k=32):
    return get_format("int8").quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_cuda_int8_kernel_stays_on_after_a_real_failure(monkeypatch, failure):
    packed = _int8_packed()
    qx, _ = _codes(m=20, k=32)
    monkeypatch.setattr(cuda, "int_mm_padded", _raising(FAILURES[failure]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs instead from now on" warning either
        with pytest.raises(RuntimeError):
            cuda._int8_product(qx, packed, torch.ones(20), None, torch.float32)
    assert ("int_mm", torch.device("cpu")) not in cuda._UNSUPPORTED


def test_cuda_int8_kernel_turns_off_only_where_it_has_none(monkeypatch):
    packed = _int8_packed()
    qx, _ = _codes(m=20, k=32)
    monkeypatch.setattr(cuda, "int_mm_padded", _raising(lambda: RuntimeError("_int_mm_out_cuda not compiled for "
                                                                             "this platform.")))
    monkeypatch.setattr(cuda, "_UNSUPPORTED", set())
    with pytest.warns(RuntimeWarning, match="int_mm kernel failed"):
        assert cuda._int8_product(qx, packed, torch.ones(20), None, torch.float32) is None
    assert ("int_mm", torch.device("cpu")) in cuda._UNSUPPORTED


@pytest.mark.parametrize("failure", ["oom", "unrelated"])
def test_cuda_int4_and_nvfp4_kernels_propagate_real_failures(monkeypatch, failure):
    monkeypatch.setattr(cuda, "_UNSUPPORTED", set())
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(cuda, "tinygemm_layout", _raising(FAILURES[failure]))
    with pytest.raises(RuntimeError):
        cuda.int4_linear(torch.randn(3, 256, dtype=torch.bfloat16), get_format("int4").quantize(w),
                         cache=LayoutCache())
    monkeypatch.setattr(cuda, "nvfp4_supported", lambda device: True)
    monkeypatch.setattr(cuda, "nvfp4_weight_operands", _raising(FAILURES[failure]))
    with pytest.raises(RuntimeError):
        cuda.nvfp4_linear(torch.randn(3, 256), get_format("nvfp4").quantize(w), cache=LayoutCache())
    assert not cuda._UNSUPPORTED


def test_speed_probe_propagates_real_failures_and_rates_a_missing_kernel_slower():
    def ref():
        return None
    with pytest.raises(torch.OutOfMemoryError):
        choice.faster_than(_raising(_oom), ref)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        choice.faster_than(_raising(FAILURES["unrelated"]), ref)
    assert choice.faster_than(_raising(lambda: UNSUPPORTED), ref) is False


def test_numba_cache_fallback_takes_only_the_no_cache_location_error(monkeypatch):
    if loops.numba is None:
        pytest.skip("numba is not installed")

    def njit(**options):
        if options.get("cache"):
            raise RuntimeError("numba internal error while compiling")
        return lambda fn: fn
    monkeypatch.setattr(loops, "njit", njit)
    with pytest.raises(RuntimeError, match="internal error"):
        loops._njit()(lambda v: v)


@pytest.mark.parametrize("failure", ["oom", "unrelated"])
def test_compute_shares_propagates_real_failures(monkeypatch, failure):
    den = tiny_unet()
    monkeypatch.setattr(den, "forward", _raising(FAILURES[failure]))
    with pytest.raises(RuntimeError):
        compute_shares(den)


def test_compute_shares_unknown_when_the_model_rejects_the_example_inputs(monkeypatch):
    den = tiny_dit()
    shares = compute_shares(den)
    assert shares and all(v is not None for v in shares.values())
    monkeypatch.setattr(den, "forward", _raising(lambda: TypeError("argument of type 'NoneType' is not iterable")))
    assert compute_shares(den) == {name: None for name in shares}


@pytest.mark.parametrize("failure", ["oom", "cpu-allocator"])
def test_apply_plan_lets_out_of_memory_through(dit_pipe, monkeypatch, failure):
    from mpsearch.errors import PlanError
    from mpsearch.plan import Plan
    from mpsearch.runtime.executor import apply_plan

    plan = Plan.uniform(dit_pipe, "int8")
    fmt = type(get_format("int8"))
    monkeypatch.setattr(fmt, "quantize", _raising(FAILURES[failure]))
    with pytest.raises(RuntimeError) as e:
        apply_plan(dit_pipe, plan)
    assert not isinstance(e.value, PlanError) and is_out_of_memory(e.value)
    monkeypatch.setattr(fmt, "quantize", _raising(lambda: ValueError("a weight the format refuses")))
    with pytest.raises(PlanError, match="cannot quantize layer"):  # a problem of the plan: still a PlanError
        apply_plan(dit_pipe, plan)


def test_load_pipeline_lets_out_of_memory_through(monkeypatch):
    import diffusers

    from mpsearch.apps.pipeline import DigitsPipeline, load_pipeline
    from mpsearch.errors import ModelError

    for cls in (DigitsPipeline, diffusers.DiffusionPipeline):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda cls, *a, **k: (_ for _ in ()).throw(_oom())))
    with pytest.raises(torch.OutOfMemoryError):
        load_pipeline("default")
    monkeypatch.setattr(DigitsPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: (_ for _ in ()).throw(OSError("no such file"))))
    with pytest.raises(ModelError, match="cannot load the pipeline"):
        load_pipeline("default")
