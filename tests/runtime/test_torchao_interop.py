"""mpsearch.to_torchao: which formats coincide with torchao's, checked on the CPU against mpsearch's own modules.

torchao is a test dependency (the `test` extra), so nothing here skips: a missing torchao fails the import below.
What torchao cannot run on a CPU is said where it matters: its NVFP4 W4A4 kernel (cuBLAS FP4, sm100) and its
CUDA int4 (tinygemm, bfloat16); their quantization numerics are checked here through the same torchao calls."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
import torchao  # noqa: F401  (a test dependency: fail, never skip, when it is missing)
from conftest import tiny_dit
from torchao.prototype.mx_formats.inference_workflow import NVFP4WeightOnlyConfig
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

import mpsearch
from mpsearch.errors import OptionalDependencyError, PlanError, UsageError
from mpsearch.formats import get_format
from mpsearch.formats.nvfp4 import E2M1_GRID, nvfp4_encode
from mpsearch.plan import Plan
from mpsearch.runtime.qmodules import quantized_module
from mpsearch.runtime.torchao_interop import TORCHAO_FORMATS, to_torchao


def _linear(out=64, inp=256, seed=0, scale=1.0, dtype=torch.float32):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(inp, out)
    with torch.no_grad():
        lin.weight.mul_(scale)
    return lin.to(dtype)


def _copy(lin):
    new = torch.nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, dtype=lin.weight.dtype)
    new.load_state_dict(lin.state_dict())
    return new


def _ours(lin, fmt):
    return quantized_module(lin, get_format(fmt).quantize(lin.weight.detach()))


# ---- nvfp4: the recipe coincides; only exact rounding ties may round the other way

_MIDS = torch.tensor([(a + b) / 2 for a, b in zip(E2M1_GRID, E2M1_GRID[1:])])


def _near_tie(x2: torch.Tensor, eff: torch.Tensor) -> torch.Tensor:
    """Elements whose scaled magnitude |x| / eff lies within a few float32 ulps of an E2M1 rounding midpoint."""
    y = x2.abs().reshape(*eff.shape, 16) / eff[..., None]
    return ((y[..., None] - _MIDS).abs() <= 4e-7 * y[..., None].clamp(min=1)).any(-1).reshape(x2.shape)


def _check_nvfp4(x2: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor, bs8: torch.Tensor, s_t: torch.Tensor):
    """ours == theirs bit for bit except on elements at a rounding tie or in blocks whose E4M3 block scale differs
    between mpsearch's ``e4m3(amax_b / (6 * s_t))`` and torchao's ``e4m3(max((amax_b / 6) / s_t, 2^-6))`` (a
    float32 rounding boundary, or torchao's floor). Returns how many elements differ."""
    rows, cols = x2.shape
    eff = bs8.to(torch.float32) * s_t
    amax_b = x2.abs().reshape(rows, cols // 16, 16).amax(-1)
    bs_tao = (amax_b / 6 / s_t).clamp(min=2.0**-6, max=448).to(torch.float8_e4m3fn)
    assert torch.equal(bs8.view(torch.uint8), (amax_b / (6 * s_t)).clamp(max=448).to(torch.float8_e4m3fn).view(torch.uint8))
    boundary = bs_tao.view(torch.uint8) != bs8.view(torch.uint8)
    excused = _near_tie(x2, eff) | boundary.repeat_interleave(16, dim=1)
    differ = ours != theirs
    assert not (differ & ~excused).any(), f"{int((differ & ~excused).sum())} elements differ away from a rounding tie"
    return int(differ.sum())


def test_nvfp4_worked_example_coincides_bit_for_bit():
    w = torch.zeros(16, 32)
    w[0, 0], w[0, 16], w[0, 17] = 2.625, 0.75, 0.3125  # docs/design.md: s_t = 2^-10, block scale 128, 0.3125 -> 0.25
    lin = torch.nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    theirs = _copy(lin)
    quantize_(theirs, NVFP4WeightOnlyConfig())
    ours = _ours(lin, "nvfp4")
    deq = theirs.weight.dequantize(torch.float32)
    assert torch.equal(deq, get_format("nvfp4").dequantize(ours.packed()))
    assert deq[0, 17].item() == 0.25
    assert theirs.weight.per_tensor_scale.item() == 2.0**-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_weights_coincide_except_at_rounding_ties(dtype):
    fmt = get_format("nvfp4")
    differ = total = 0
    for seed in range(6):
        lin = _linear(seed=seed, scale=10.0 ** (seed - 3), dtype=dtype)
        theirs = _copy(lin)
        quantize_(theirs, NVFP4WeightOnlyConfig())  # the weight the W4A4 config builds too (same to_nvfp4 call)
        packed = _ours(lin, "nvfp4").packed()
        assert theirs.weight.per_tensor_scale.item() == packed.tensors["tensor_scale"].item()
        ours = fmt.dequantize(packed).to(torch.float32)  # in the layer's dtype, as the model holds it
        mine = theirs.weight.dequantize(dtype).to(torch.float32)
        differ += _check_nvfp4(lin.weight.detach().float(), ours, mine, packed.tensors["block_scale"],
                               packed.tensors["tensor_scale"])
        total += ours.numel()
    # scripts/bench_torchao.py: none of these float32 weights, 3.5e-4 of the bfloat16 ones (whose short mantissas
    # land exactly on ties, which mpsearch rounds to even and torchao's reciprocal pushes off the tie)
    assert differ <= 1e-3 * total
    assert (differ > 0) == (dtype == torch.bfloat16)


def test_nvfp4_a_block_scale_on_a_rounding_boundary_is_where_they_differ():
    """Where torchao and mpsearch do differ (scripts/bench_torchao.py: 5.3e-5 of float32 elements over a wide
    sweep), it is a block scale at a float32 rounding boundary: here amax_b / (6 * s_t) rounds to the E4M3 value
    0.6875 and (amax_b / 6) / s_t to 0.625, so that block's elements differ, and nothing else does."""
    amax_t, amax_b = float.fromhex("0x1.adfd08p+1"), float.fromhex("0x1.427dc6p-8")
    w = torch.zeros(16, 32)
    w[0, 0] = amax_t
    w[0, 16:32] = amax_b * torch.linspace(-1, 1, 16).abs().flip(0)
    w[1] = torch.linspace(-1, 1, 32)
    fmt = get_format("nvfp4")
    p = fmt.quantize(w)
    t = NVFP4Tensor.to_nvfp4(w, per_tensor_scale=per_tensor_amax_to_scale(w.abs().max()), is_swizzled_scales=False,
                             use_triton_kernel=False)
    assert p.tensors["block_scale"][0, 1].float().item() == 0.6875 and t.scale[0, 1].float().item() == 0.625
    ours, theirs = fmt.dequantize(p), t.dequantize(torch.float32)
    assert _check_nvfp4(w, ours, theirs, p.tensors["block_scale"], p.tensors["tensor_scale"]) > 0
    assert torch.equal(ours[:, :16], theirs[:, :16]) and torch.equal(ours[1:], theirs[1:])


def test_nvfp4_activations_coincide_except_at_rounding_ties():
    """torchao's dynamic W4A4 path quantizes the activation with a tensor scale from the whole activation, as
    mpsearch does; its FP4 GEMM needs an sm100 GPU, so the CPU compares the quantized activations."""
    fmt = get_format("nvfp4")
    torch.manual_seed(1)
    differ = 0
    for _ in range(4):
        x = torch.randn(32, 256) * torch.rand(32, 1) * 3
        ours = fmt.quantize_activation(x)
        t = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.abs().max()), is_swizzled_scales=True,
                                 use_triton_kernel=False)
        _, bs8, s_t = nvfp4_encode(x)
        differ += _check_nvfp4(x, ours, t.dequantize(torch.float32), bs8, s_t)
    assert differ == 0  # measured: none on these activations


def test_nvfp4_weight_only_outputs_match():
    """torchao's NVFP4 weight-only Linear (dequantize, then F.linear) against mpsearch's NVFP4 matmul with fp
    activations: equal weights, so the outputs differ only by F.linear's fused bias against mpsearch's add."""
    lin = _linear(seed=3)
    theirs = _copy(lin)
    quantize_(theirs, NVFP4WeightOnlyConfig())
    ours = _ours(lin, "nvfp4")
    assert torch.equal(theirs.weight.dequantize(torch.float32), get_format("nvfp4").dequantize(ours.packed()))
    x = torch.randn(8, 256)
    with torch.no_grad():
        y_t = theirs(x)
        y_o = get_format("nvfp4").matmul(x, ours.packed(), quantize_activations=False) + lin.bias
    torch.testing.assert_close(y_t, y_o, rtol=1e-6, atol=1e-6)


# ---- int8: torchao's scale is amax/127.5, mpsearch's amax/127: not the same format

def test_int8_torchao_scale_is_not_mpsearchs():
    lin = _linear(seed=0)
    theirs = _copy(lin)
    quantize_(theirs, Int8DynamicActivationInt8WeightConfig())
    packed = _ours(lin, "int8").packed()
    amax = lin.weight.detach().abs().amax(1)
    assert torch.equal(theirs.weight.scale.flatten(), amax / 127.5)
    assert torch.equal(packed.tensors["scale"], amax / 127)
    assert not torch.equal(theirs.weight.qdata, packed.tensors["qweight"])
    assert int(theirs.weight.qdata.min()) == -128 or int(theirs.weight.qdata.max()) == 127
    deq_t = theirs.weight.dequantize(torch.float32)
    deq_o = get_format("int8").dequantize(packed)
    # two grids whose steps differ by 0.4%: every weight within half a step of both
    half = (packed.tensors["scale"] / 2 + theirs.weight.scale.flatten() / 2)[:, None]
    assert ((deq_t - deq_o).abs() <= half * (1 + 1e-6)).all()


def test_int8_outputs_differ_by_about_one_quantization_error():
    lin = _linear(seed=1)
    theirs = _copy(lin)
    quantize_(theirs, Int8DynamicActivationInt8WeightConfig())
    ours = _ours(lin, "int8")
    torch.manual_seed(2)
    x = torch.randn(16, 256)
    with torch.no_grad():
        y_fp, y_t, y_o = lin(x), theirs(x), ours(x)
    err_o = (y_o - y_fp).abs().max()
    gap = (y_t - y_o).abs().max()
    assert 0 < gap <= 2 * err_o, (gap, err_o)  # scripts/bench_torchao.py: at most 1.33x mpsearch's own error


# ---- int4: tinygemm's grid is mpsearch's, but torchao keeps scale and zero in the model's dtype

@pytest.mark.parametrize("group", [128, 64, 32])
def test_int4_cpu_grid_matches_up_to_the_float16_scales(group):
    fmt_name = {128: "int4", 64: "int4-g64", 32: "int4-g32"}[group]
    lin = _linear(seed=group)
    theirs = _copy(lin)
    quantize_(theirs, PrototypeInt4WeightOnlyConfig(group_size=group))
    packed = get_format(fmt_name).quantize(lin.weight.detach())
    deq_o = get_format(fmt_name).dequantize(packed)
    with torch.no_grad():
        deq_t = F.linear(torch.eye(256), theirs.weight).t()  # the CPU kernel's weight, read through the identity
    # mpsearch's codes come from the exact float32 grid (as torchao's), its stored scale and zero are float16
    w = lin.weight.detach().reshape(64, 256 // group, group)
    mn, mx = w.amin(-1), w.amax(-1)
    scale, zero = (mx - mn) / 15, mn + 8 * (mx - mn) / 15
    bound = 8 * (packed.tensors["scale"].float() - scale).abs() + (packed.tensors["zero"].float() - zero).abs()
    bound = (bound + 1e-6 * w.abs().amax(-1)).repeat_interleave(group, dim=1)
    diff = (deq_t - deq_o).abs()
    assert (diff <= bound).all(), float((diff - bound).max())
    assert diff.max() > 0  # not bit for bit: torchao's float32 scale and zero against mpsearch's float16
    x = torch.randn(8, 256)
    with torch.no_grad():
        y_t = theirs(x)
        y_o = F.linear(x, deq_o, lin.bias)
    assert ((y_t - y_o).abs() <= x.abs().sum(1, keepdim=True) * bound.max() * 1.01 + 1e-5).all()


# ---- weights="mpsearch": torchao's kernels on mpsearch's packed weights

def _mpsearch_weights(lin, fmt):
    from mpsearch.runtime.torchao_interop import _weights_config

    theirs = _copy(lin)
    quantize_(theirs, _weights_config()(fmt=fmt))
    return theirs


@pytest.mark.parametrize("fmt", ["int4", "int4-g64", "int4-g32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_int4_mpsearch_weights_on_torchaos_cpu_kernel_coincide(fmt, dtype):
    lin = _linear(seed=5, dtype=dtype)
    theirs = _mpsearch_weights(lin, fmt)
    assert type(theirs.weight).__name__ == "Int4OpaqueTensor"
    ours = get_format(fmt).dequantize(get_format(fmt).quantize(lin.weight.detach()))
    with torch.no_grad():
        deq = F.linear(torch.eye(256, dtype=dtype), theirs.weight).t()
    assert torch.equal(deq, ours)  # bit for bit: mpsearch's codes, float16 scale and zero, in torchao's kernel
    if dtype == torch.float32:
        x = torch.randn(8, 256)
        with torch.no_grad():
            # the same weights; torchao's kernel sums the products in its own order
            torch.testing.assert_close(theirs(x), F.linear(x, ours, lin.bias), rtol=1e-5, atol=1e-5)


def test_int8_mpsearch_weights_coincide_and_activations_do_not():
    lin = _linear(seed=6)
    theirs = _mpsearch_weights(lin, "int8")
    ours = _ours(lin, "int8")
    assert torch.equal(theirs.weight.dequantize(), get_format("int8").dequantize(ours.packed()))
    x = torch.randn(16, 256)
    with torch.no_grad():
        y_fp, y_t, y_o = lin(x), theirs(x), ours(x)
    assert 0 < (y_t - y_o).abs().max() <= 2 * (y_o - y_fp).abs().max()  # torchao's amax/127.5 activations


def test_mapping_with_mpsearch_weights():
    m = tiny_dit()
    plan = Plan.uniform(m, "int4")
    mapping = to_torchao(plan, m, weights="mpsearch")  # no error: int4 coincides on the CPU this way
    assert len(mapping.coinciding) == 4 and not mapping.nearest
    torch.manual_seed(0)
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([10, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        with mpsearch.apply_plan(m, plan):
            y_ours = m(x, timestep=t, class_labels=c).sample
        mapping.apply(m)
        y_tao = m(x, timestep=t, class_labels=c).sample
    torch.testing.assert_close(y_tao, y_ours, rtol=1e-5, atol=1e-5)  # measured 4.8e-7
    int8 = Plan.uniform(tiny_dit(), "int8")
    with pytest.raises(PlanError, match=r"int8 activations: torchao quantizes them with amax/127\.5"):
        to_torchao(int8, tiny_dit(), weights="mpsearch")
    assert len(to_torchao(int8, tiny_dit(), weights="mpsearch", mismatch="nearest").nearest) == 20
    with pytest.raises(UsageError, match="weights must be"):
        to_torchao(plan, weights="packed")


# ---- the mapping

def test_table_says_which_formats_coincide():
    assert {k: v[0] for k, v in TORCHAO_FORMATS.items()} == {"nvfp4": True, "int8": False, "int4": False}


def test_nvfp4_plan_maps_to_the_w4a4_config_and_conv_layers_follow_mismatch():
    m = tiny_dit()
    plan = Plan.uniform(m, "nvfp4")
    with pytest.raises(PlanError, match=r"1 planned layer.*'pos_embed\.proj'.*nn\.Linear only.*mismatch='nearest'"):
        to_torchao(plan, m)
    mapping = to_torchao(plan, m, mismatch="fp")
    assert set(mapping.full_precision) == {"pos_embed.proj"}
    assert mapping.coinciding == list(mapping.configs) and len(mapping.configs) == 20 and not mapping.nearest
    cfg = mapping.configs["transformer_blocks.0.attn1.to_q"]
    assert type(cfg).__name__ == "NVFP4DynamicActivationNVFP4WeightConfig" and cfg.use_triton_kernel is False
    assert type(mapping.fqn_config()).__name__ == "FqnToConfig"


def test_int8_plan_is_an_error_by_default_and_nearest_runs_on_the_cpu():
    m = tiny_dit()
    plan = Plan.uniform(m, "int8")
    with pytest.raises(PlanError, match=r"amax/127\.5.*mismatch='fp'"):
        to_torchao(plan, m)
    assert set(to_torchao(plan, m, mismatch="fp").full_precision) == set(n for n, f in plan.layers.items() if f != "fp")
    mapping = to_torchao(plan, m, mismatch="nearest")
    assert len(mapping.nearest) == 20 and not mapping.coinciding and "pos_embed.proj" in mapping.full_precision
    assert mapping.device == "cpu"
    torch.manual_seed(0)
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([10, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        y_fp = m(x, timestep=t, class_labels=c).sample
        with mpsearch.apply_plan(m, plan):
            y_ours = m(x, timestep=t, class_labels=c).sample
        mapping.apply(m)
        y_tao = m(x, timestep=t, class_labels=c).sample
    assert type(m.transformer_blocks[0].attn1.to_q.weight).__name__ == "Int8Tensor"
    # torchao's int8 is another W8A8 quantization (and the conv stays fp): its gap to mpsearch's is of the order
    # of mpsearch's own error against fp (measured 1.4x on this model)
    assert (y_tao - y_ours).abs().max() <= 3 * (y_ours - y_fp).abs().max()


def test_int4_plan_nearest_picks_the_config_for_the_device():
    m = tiny_dit()
    plan = Plan.uniform(m, "int4")
    with pytest.raises(PlanError, match=r"float16 \(weights='mpsearch' runs mpsearch's own int4 weights"):
        to_torchao(plan, m)
    cpu = to_torchao(plan, m, mismatch="nearest")
    assert {type(c).__name__ for c in cpu.configs.values()} == {"PrototypeInt4WeightOnlyConfig"}
    assert {c.group_size for c in cpu.configs.values()} == {128}
    cuda = to_torchao(plan, mismatch="nearest")  # no model: layers taken as Linear, device defaults to cuda
    cfg = next(iter(cuda.configs.values()))
    assert type(cfg).__name__ == "Int4WeightOnlyConfig" and cfg.int4_packing_format == "tile_packed_to_4d"
    cpu.apply(m)
    assert type(m.transformer_blocks[0].ff.net[2].weight).__name__ == "Int4OpaqueTensor"
    # torchao's CUDA int4 (tinygemm) takes bfloat16 weights only: a float32 model is refused, by name
    with pytest.raises(PlanError, match=r"int4 on CUDA with float32 weights.*bfloat16 only"):
        to_torchao(plan, tiny_dit(), device="cuda")
    bf16 = tiny_dit().to(torch.bfloat16)
    assert len(to_torchao(Plan.uniform(bf16, "int4"), bf16, device="cuda", mismatch="nearest").configs) == 4


def test_nvfp4_apply_says_it_needs_an_sm100_gpu():
    m = tiny_dit()
    mapping = to_torchao(Plan.uniform(m, "nvfp4"), m, mismatch="fp")
    with pytest.raises(PlanError, match="sm100 GPUs only.*mpsearch.apply_plan"):
        mapping.apply(m)
    assert type(m.transformer_blocks[0].attn1.to_q.weight) is torch.nn.Parameter  # untouched


def test_activation_windows_and_cache_are_not_silently_dropped():
    m = tiny_dit()
    plan = Plan.uniform(m, "nvfp4")
    plan.overrides = [{"steps": [0, 5], "activations": {"transformer_blocks.0.attn1.to_q": "fp"}}]
    with pytest.raises(PlanError, match=r"activation windows \(fp in steps \[0, 5\)\)"):
        to_torchao(plan, m)
    mapping = to_torchao(plan, m, mismatch="nearest")
    assert "activation windows" in mapping.nearest["transformer_blocks.0.attn1.to_q"]
    assert "transformer_blocks.0.attn1.to_q" not in mapping.coinciding
    plan.overrides = []
    plan.cache = {"unit": {}, "compute": [0, 1]}  # any cache section: torchao has no feature caching
    with pytest.warns(UserWarning, match="cache schedule"):
        mapping = to_torchao(plan, m, mismatch="fp")
    assert mapping.not_carried == ["cache"]


def test_bad_arguments_and_a_missing_torchao_are_one_line_errors(monkeypatch):
    m = tiny_dit()
    plan = Plan.uniform(m, "nvfp4")
    with pytest.raises(UsageError, match="mismatch must be one of"):
        to_torchao(plan, m, mismatch="closest")
    with pytest.raises(UsageError, match="device"):
        to_torchao(plan, device="xpu")
    with pytest.raises(PlanError, match="expects a mpsearch.Plan"):
        to_torchao({"layers": {}})
    for name in ("torchao.quantization", "torchao.prototype.mx_formats.inference_workflow",
                 "torchao.prototype.quantization.int4.inference_workflow", "torchao.quantization.quantize_.workflows"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(OptionalDependencyError, match=r"pip install torchao==0\.18\.0"):
        to_torchao(plan, m)


def test_exported_from_the_package():
    assert mpsearch.to_torchao is to_torchao
