"""Quantizer variants: valid codes of the base format, lower error than round-to-nearest on what each optimizes,
determinism, the catalogue and its errors. Seeded, CPU, small layers."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers_quant import calibrate, conv_rows, heavy_weight, layout, outlier_inputs, raw, same_bits

from mpsearch.errors import FormatError
from mpsearch.formats import Packed, get_format
from mpsearch.quantizers import (
    CLIP_GRID,
    VARIANTS,
    Calibration,
    expand_factors,
    extra_bytes,
    needs_hessian,
    quantize_variant,
    reencode,
    smoothed_matmul,
    smoothing_factors,
    variant_applies,
)
from mpsearch.quantizers.codes import encode_grid, grid_of, unpack_codes

FORMATS = ("int8", "nvfp4", "int4", "int4-g64")
CASES = [(f, v) for f in FORMATS for v in VARIANTS if variant_applies(f, v)]
OUT, INP, ROWS = 64, 256, 1024


@functools.cache
def linear_layer():
    """(w, x, calibration) of a Linear: heavy-tailed weights, correlated inputs with a few large channels."""
    w = heavy_weight(OUT, INP)
    x = outlier_inputs(ROWS, INP)
    return w, x, calibrate(x)


@functools.cache
def conv_layer():
    """(w (32, 16, 3, 3), NCHW input, im2col rows, calibration) of a Conv2d, a few input channels large."""
    g = torch.Generator().manual_seed(3)
    w = heavy_weight(32, 16 * 9, seed=4).reshape(32, 16, 3, 3)
    img = torch.randn(4, 16, 8, 8, generator=g)
    img[:, 2] *= 20.0
    img[:, 9] *= 8.0
    rows = conv_rows(img)
    return w, img, rows, calibrate(rows, in_channels=16, kernel_area=9)


def output_error(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    w2, q2 = w.reshape(w.shape[0], -1).double(), q.reshape(q.shape[0], -1).double()
    return float(((x.double() @ w2.t() - x.double() @ q2.t()) ** 2).sum())


def weighted_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """sum_j h_j (W_ij - Q_ij)^2 per (row, input): the clip objective before summing over groups."""
    d = w.reshape(w.shape[0], -1).double() - q.reshape(q.shape[0], -1).double()
    return d.square() * h.double()


# --------------------------------------------------------------------------------------------------
# valid codes of the base format
# --------------------------------------------------------------------------------------------------

def _check_valid(fmt_name: str, variant: str, w: torch.Tensor, calib: Calibration) -> Packed:
    fmt = get_format(fmt_name)
    packed, s = quantize_variant(fmt_name, variant, w, calib)
    rtn = fmt.quantize(w)
    assert packed.format == fmt_name and packed.shape == tuple(w.shape) and packed.dtype == w.dtype
    assert layout(packed) == layout(rtn)
    assert same_bits(reencode(packed), packed), "a code does not decode and re-encode to itself"
    assert fmt.weight_bytes(w.shape) == packed.nbytes
    if variant in ("smooth", "awq", "smooth-gptq"):
        assert s is not None and s.dtype == torch.float32 and s.shape == (w.shape[1],)
        assert extra_bytes(fmt_name, variant, w.shape) == 4 * w.shape[1] == s.numel() * s.element_size()
    else:
        assert s is None and extra_bytes(fmt_name, variant, w.shape) == 0
    return packed


@pytest.mark.parametrize("fmt_name, variant", CASES)
def test_linear_codes_are_valid_codes_of_the_base_format(fmt_name, variant):
    w, _, calib = linear_layer()
    packed = _check_valid(fmt_name, variant, w, calib)
    assert not same_bits(packed, get_format(fmt_name).quantize(w)), "the variant changed nothing on this layer"


@pytest.mark.parametrize("fmt_name, variant", [c for c in CASES if c[0] in ("int8", "nvfp4")])
def test_conv_codes_are_valid_codes_of_the_base_format(fmt_name, variant):
    w, _, _, calib = conv_layer()
    _check_valid(fmt_name, variant, w, calib)


@pytest.mark.parametrize("fmt_name, variant", [("int8", "clip"), ("nvfp4", "gptq"), ("int4", "gptq"),
                                               ("nvfp4", "smooth")])
def test_a_bfloat16_weight_packs_like_rtn_packs_it(fmt_name, variant):
    w, _, calib = linear_layer()
    w16 = w.to(torch.bfloat16)
    packed, _ = quantize_variant(fmt_name, variant, w16, calib)
    rtn = get_format(fmt_name).quantize(w16)
    assert packed.dtype == torch.bfloat16 and layout(packed) == layout(rtn)
    assert get_format(fmt_name).dequantize(packed).dtype == torch.bfloat16


@pytest.mark.parametrize("fmt_name, variant", CASES)
def test_the_same_inputs_give_bit_identical_outputs(fmt_name, variant):
    w, _, calib = linear_layer()
    a, sa = quantize_variant(fmt_name, variant, w.clone(), calib)
    b, sb = quantize_variant(fmt_name, variant, w.clone(), calib)
    assert same_bits(a, b)
    assert (sa is None and sb is None) or torch.equal(raw(sa), raw(sb))


def test_reencode_detects_codes_the_format_never_writes():
    w, _, _ = linear_layer()
    p8 = get_format("int8").quantize(w)
    q = p8.tensors["qweight"].clone()
    q[0, 0] = -128  # outside the symmetric +-127 range
    bad8 = Packed(p8.format, p8.shape, p8.dtype, {**p8.tensors, "qweight": q})
    assert same_bits(reencode(p8), p8) and not same_bits(reencode(bad8), bad8)

    wc = w.clone()
    wc[0, :128] = 0.5  # a constant group: scale 0, every code must be 8
    p4 = get_format("int4").quantize(wc)
    q4 = p4.tensors["qweight"].clone()
    q4[0, 0] = 0x88 ^ 0x01  # codes 9 and 8 in a group whose scale is 0
    bad4 = Packed(p4.format, p4.shape, p4.dtype, {**p4.tensors, "qweight": q4})
    assert same_bits(reencode(p4), p4) and not same_bits(reencode(bad4), bad4)


# --------------------------------------------------------------------------------------------------
# clip
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt_name", FORMATS)
def test_clip_lowers_the_activation_weighted_error_never_worse_per_group(fmt_name):
    w, _, calib = linear_layer()
    fmt = get_format(fmt_name)
    clip, _ = quantize_variant(fmt_name, "clip", w, calib)
    e_clip = weighted_error(w, fmt.dequantize(clip), calib.x2)
    e_rtn = weighted_error(w, fmt.fake_quantize(w), calib.x2)
    assert e_clip.sum() < e_rtn.sum()
    group = {"int8": INP, "nvfp4": 16, "int4": 128, "int4-g64": 64}[fmt_name]
    per_group = lambda e: e.reshape(OUT, INP // group, group).sum(-1)  # noqa: E731
    assert bool((per_group(e_clip) <= per_group(e_rtn) * (1 + 1e-12)).all())


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_clip_ties_keep_round_to_nearest_bit_for_bit(fmt_name):
    # inputs that are never active make every ratio's error 0: r = 1, i.e. exactly fmt.quantize(w)
    w, _, calib = linear_layer()
    dead = Calibration(x2=torch.zeros(INP), xmax=calib.xmax, hessian=None, rows=calib.rows)
    packed, _ = quantize_variant(fmt_name, "clip", w, dead)
    assert same_bits(packed, get_format(fmt_name).quantize(w))


def test_clip_ratio_grid_is_the_documented_one():
    assert CLIP_GRID == (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def test_clip_scales_are_ratios_of_the_rtn_scales_int8():
    w, _, calib = linear_layer()
    clip, _ = quantize_variant("int8", "clip", w, calib)
    amax = w.abs().amax(1)
    candidates = torch.stack([(amax * r) / 127 for r in CLIP_GRID], dim=1)  # (out, ratios)
    match = candidates == clip.tensors["scale"][:, None]
    assert bool(match.any(dim=1).all()), "a row scale is no ratio of the grid times amax/127"
    chosen = match.int().argmax(dim=1)
    assert len(set(chosen.tolist())) > 1  # the search chose different ratios for different rows


# --------------------------------------------------------------------------------------------------
# gptq
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt_name, limit", [("int4", 0.9), ("int4-g64", 0.9), ("nvfp4", 0.9), ("int8", 1.0)])
def test_gptq_lowers_the_output_error_on_the_calibration_rows(fmt_name, limit):
    w, x, calib = linear_layer()
    fmt = get_format(fmt_name)
    gptq, _ = quantize_variant(fmt_name, "gptq", w, calib)
    e_gptq = output_error(x, w, fmt.dequantize(gptq))
    e_rtn = output_error(x, w, fmt.fake_quantize(w))
    assert e_gptq < limit * e_rtn


@pytest.mark.parametrize("fmt_name", ["int4", "nvfp4", "int8"])
def test_gptq_keeps_rtn_scales_and_leaves_never_active_columns_at_rtn(fmt_name):
    w, x, _ = linear_layer()
    x = x.clone()
    x[:, 5] = 0.0  # an input that is never active: H_55 = 0
    calib = calibrate(x)
    fmt = get_format(fmt_name)
    gptq, _ = quantize_variant(fmt_name, "gptq", w, calib)
    rtn = fmt.quantize(w)
    for k in rtn.tensors:
        if k != "qweight":
            assert torch.equal(raw(gptq.tensors[k]), raw(rtn.tensors[k]))
    codes, rtn_codes = unpack_codes(gptq), unpack_codes(rtn)
    assert torch.equal(codes[:, 5], rtn_codes[:, 5])
    assert not torch.equal(codes, rtn_codes)


@pytest.mark.parametrize("fmt_name", ["int4", "nvfp4", "int8"])
def test_gptq_rounds_in_natural_order_and_takes_act_order_for_comparison(fmt_name):
    """The default order is natural (bit for bit ``order=arange``); act-order (descending H_jj, stable) is a
    permutation whose codes are valid codes on RTN's scales and lower the output error on the calibration rows
    (what it optimizes; it is not the default because held-out images got worse, docs/benchmarks.md)."""
    from mpsearch.quantizers.gptq import act_order, gptq_quantize

    w, x, calib = linear_layer()
    fmt = get_format(fmt_name)
    order = act_order(calib.hessian)
    diag = calib.hessian.diagonal()
    assert sorted(order.tolist()) == list(range(INP)) and bool((diag[order][:-1] >= diag[order][1:]).all())
    assert act_order(torch.eye(4)).tolist() == [0, 1, 2, 3]  # ties keep the column order
    default = gptq_quantize(fmt, w, calib.hessian)
    assert same_bits(default, gptq_quantize(fmt, w, calib.hessian, order=torch.arange(INP)))
    assert same_bits(default, quantize_variant(fmt_name, "gptq", w, calib)[0])
    act = gptq_quantize(fmt, w, calib.hessian, order=order)
    assert same_bits(reencode(act), act)  # valid codes of the format
    assert output_error(x, w, fmt.dequantize(act)) < 0.9 * output_error(x, w, fmt.dequantize(default))
    with pytest.raises(FormatError, match="permutation"):
        gptq_quantize(fmt, w, calib.hessian, order=torch.zeros(INP, dtype=torch.long))


# --------------------------------------------------------------------------------------------------
# smooth
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt_name", ["int8", "nvfp4"])
def test_smooth_lowers_the_w_a_quantized_output_error_on_outlier_channels(fmt_name):
    w, x, calib = linear_layer()
    fmt = get_format(fmt_name)
    packed, s = quantize_variant(fmt_name, "smooth", w, calib)
    ref = x.double() @ w.double().t()
    e_smooth = float(((smoothed_matmul(fmt, x, packed, s).double() - ref) ** 2).sum())
    e_rtn = float(((fmt.matmul(x, fmt.quantize(w)).double() - ref) ** 2).sum())
    assert e_smooth < e_rtn


@pytest.mark.parametrize("fmt_name", ["int8", "nvfp4"])
def test_smooth_gptq_is_gptq_of_the_smoothed_weight_and_beats_both_on_outlier_channels(fmt_name):
    from mpsearch.quantizers import gptq_quantize

    w, x, calib = linear_layer()
    fmt = get_format(fmt_name)
    packed, s = quantize_variant(fmt_name, "smooth-gptq", w, calib)
    assert torch.equal(s, smoothing_factors(w, calib.xmax))
    h = calib.hessian.double() / s.double()[:, None] / s.double()[None, :]
    assert same_bits(packed, gptq_quantize(fmt, w * s[None, :], h))
    ref = x.double() @ w.double().t()
    e_both = float(((smoothed_matmul(fmt, x, packed, s).double() - ref) ** 2).sum())
    sm, s1 = quantize_variant(fmt_name, "smooth", w, calib)
    e_smooth = float(((smoothed_matmul(fmt, x, sm, s1).double() - ref) ** 2).sum())
    gp, _ = quantize_variant(fmt_name, "gptq", w, calib)
    e_gptq = float(((fmt.matmul(x, gp).double() - ref) ** 2).sum())
    assert e_both < min(e_smooth, e_gptq)


def test_smoothing_factors_follow_the_formula():
    w = torch.tensor([[1.0, -4.0, 0.0, 2.0], [0.25, 1.0, 0.0, -8.0]])
    xmax = torch.tensor([4.0, 1.0, 3.0, 0.0])
    s = smoothing_factors(w, xmax)
    # sqrt(xmax / wmax); a zero wmax or xmax gives 1
    assert s.dtype == torch.float32 and s.tolist() == [2.0, 0.5, 1.0, 1.0]
    huge = smoothing_factors(torch.tensor([[1e-30, 1.0]]), torch.tensor([1e30, 1e-30]))
    assert huge.tolist() == [pytest.approx(1e5), pytest.approx(1e-5)]  # clamped to [1e-5, 1e5]


def test_smooth_on_a_conv_divides_each_input_channel_and_multiplies_its_weights():
    w, img, rows, calib = conv_layer()
    fmt = get_format("int8")
    packed, s = quantize_variant("int8", "smooth", w, calib)
    assert torch.equal(s, smoothing_factors(w, img.abs().amax(dim=(0, 2, 3))))
    # the weights are W * s per input channel (over kh, kw): exactly RTN of that tensor
    assert same_bits(packed, fmt.quantize(w * s[None, :, None, None]))
    # im2col rows divided per column = im2col of the input divided per channel, bit for bit
    y = smoothed_matmul(fmt, rows, packed, s)
    assert torch.equal(y, fmt.matmul(conv_rows(img / s[None, :, None, None]), packed))
    assert torch.equal(expand_factors(s, 144)[9 * 2: 9 * 3], s[2].repeat(9))
    ref = rows.double() @ w.reshape(32, -1).double().t()
    e_smooth = float(((y.double() - ref) ** 2).sum())
    e_rtn = float(((fmt.matmul(rows, fmt.quantize(w)).double() - ref) ** 2).sum())
    assert e_smooth < e_rtn


# --------------------------------------------------------------------------------------------------
# awq
# --------------------------------------------------------------------------------------------------

def _weight_only_error(w: torch.Tensor, deq_over_s: torch.Tensor, h: torch.Tensor) -> float:
    d = (deq_over_s.reshape(w.shape[0], -1) - w.reshape(w.shape[0], -1)).double()
    return float(((d @ h.double()) * d).sum())


@pytest.mark.parametrize("fmt_name", ["int4", "int4-g64", "nvfp4"])
def test_awq_lowers_the_weight_only_output_error_it_searches(fmt_name):
    w, x, calib = linear_layer()
    fmt = get_format(fmt_name)
    packed, s = quantize_variant(fmt_name, "awq", w, calib)
    deq = fmt.dequantize(packed) / expand_factors(s, w.shape[1])[None, :]
    e_awq = _weight_only_error(w, deq, calib.hessian)
    e_rtn = _weight_only_error(w, fmt.dequantize(fmt.quantize(w)), calib.hessian)
    assert e_awq < 0.9 * e_rtn
    # the output error on the calibration rows themselves, through the format's own product of x / s
    ref = x.double() @ w.double().t()
    e_out = float(((smoothed_matmul(fmt, x, packed, s).double() - ref) ** 2).sum())
    e_out_rtn = float(((fmt.matmul(x, fmt.quantize(w)).double() - ref) ** 2).sum())
    assert e_out < e_out_rtn


def test_awq_chooses_the_grid_alpha_with_the_least_error_and_follows_the_formula():
    from mpsearch.quantizers.awq import (
        ALPHAS,
        _error,
        activation_magnitude,
        awq_factors,
        awq_scale,
        weight_magnitude,
    )
    w, _, calib = linear_layer()
    fmt = get_format("int4")
    s, alpha = awq_scale(fmt, w, calib)
    a, m = activation_magnitude(calib), weight_magnitude(fmt, w)
    errors = [_error(fmt, w, awq_factors(a, m, al), calib, w.shape) for al in ALPHAS]
    assert alpha == ALPHAS[min(range(len(ALPHAS)), key=errors.__getitem__)]
    assert torch.equal(s, awq_factors(a, m, alpha))
    assert ALPHAS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    # the formula on a hand-made case: a ** alpha / m ** (1 - alpha), clamped, over sqrt(max * min)
    f = awq_factors(torch.tensor([4.0, 1.0]), torch.tensor([1.0, 1.0]), 0.5)
    assert f.tolist() == [pytest.approx(2.0 / 2 ** 0.5), pytest.approx(1.0 / 2 ** 0.5)]
    # the RMS of each channel, the mean relative magnitude per group
    assert torch.allclose(activation_magnitude(calib), calib.x2.sqrt())
    wm = weight_magnitude(get_format("nvfp4"), torch.tensor([[1.0, -2.0] + [0.0] * 14, [4.0, 4.0] + [0.0] * 14]))
    assert wm[:2].tolist() == [pytest.approx(0.75), pytest.approx(1.0)]


def test_awq_on_a_conv_uses_one_factor_per_input_channel():
    w, img, rows, calib = conv_layer()
    fmt = get_format("nvfp4")
    packed, s = quantize_variant("nvfp4", "awq", w, calib)
    assert s.shape == (16,)
    assert same_bits(packed, fmt.quantize(w * s[None, :, None, None]))
    y = smoothed_matmul(fmt, rows, packed, s)
    assert torch.equal(y, fmt.matmul(conv_rows(img / s[None, :, None, None]), packed))


# --------------------------------------------------------------------------------------------------
# the catalogue and its errors
# --------------------------------------------------------------------------------------------------

def test_which_variant_applies_to_which_format():
    table = {f: tuple(v for v in VARIANTS if variant_applies(f, v))
             for f in ("fp", "int8", "nvfp4", "int4", "int4-g64", "int4-g32")}
    assert table == {"fp": (), "int8": ("clip", "smooth", "gptq", "smooth-gptq"),
                     "nvfp4": ("clip", "smooth", "gptq", "awq", "smooth-gptq"),
                     "int4": ("clip", "gptq", "awq"), "int4-g64": ("clip", "gptq", "awq"),
                     "int4-g32": ("clip", "gptq", "awq")}
    assert [needs_hessian(v) for v in VARIANTS] == [False, False, True, False, True]
    assert extra_bytes("nvfp4", "smooth", (8, 16, 3, 3)) == 64 and extra_bytes("int4", "gptq", (8, 128)) == 0
    assert extra_bytes("int4", "awq", (8, 128)) == 512
    from mpsearch.formats.variant import uses_hessian  # gptq needs it; awq scores its search with it where recorded

    assert [uses_hessian(get_format(f"nvfp4:{v}")) for v in VARIANTS] == [False, False, True, True, True]
    assert variant_applies("fp", "") and extra_bytes("int8", "", (4, 16)) == 0 and not needs_hessian("")


def _calib(in_cols: int, in_channels: int | None = None, hessian: bool = True) -> Calibration:
    c = in_channels or in_cols
    return Calibration(x2=torch.ones(in_cols), xmax=torch.ones(c), hessian=torch.eye(in_cols) if hessian else None,
                       rows=1)


@pytest.mark.parametrize("call, match", [
    (lambda w: quantize_variant("int4", "smooth", w, _calib(256)), "'smooth' does not apply to format 'int4'"),
    (lambda w: quantize_variant("fp", "clip", w, _calib(256)), "'clip' does not apply to format 'fp'"),
    (lambda w: quantize_variant("int8", "awq", w, _calib(256)), "'awq' does not apply to format 'int8'; it needs a 4-bit"),
    (lambda w: quantize_variant("int8", "AWQ", w, _calib(256)), "unknown quantizer variant 'AWQ'; expected one of clip"),
    (lambda w: quantize_variant("int5", "clip", w, _calib(256)), "unknown format 'int5'"),
    (lambda w: quantize_variant("int8", "clip", w, _calib(128)), "calibration of 128 input columns / 128 channels does not fit"),
    (lambda w: quantize_variant("nvfp4", "gptq", w, _calib(256, hessian=False)), "'gptq' needs the input hessian"),
    (lambda w: quantize_variant("nvfp4", "clip", w[:, :24], _calib(24)), "cannot take shape"),
    (lambda w: quantize_variant("int8", "gptq", w.reshape(64, 16, 4, 4), _calib(256, 64)), "256 input columns / 64 channels"),
    (lambda w: quantize_variant("int8", "clip", w, None), "needs a Calibration"),
    (lambda w: quantize_variant("int4", "clip", w * float("nan"), _calib(256)), "NaN/inf"),
    (lambda w: extra_bytes("int4", "smooth", (8, 128)), "'smooth' does not apply"),
    (lambda w: needs_hessian("GPTQ"), "unknown quantizer variant 'GPTQ'"),
    (lambda w: quantize_variant("int8", "gptq", w, Calibration(torch.ones(256), torch.ones(256), -torch.eye(256), 1)),
     "not positive definite even after damping"),
])
def test_errors_are_one_line_format_errors(call, match):
    w, _, _ = linear_layer()
    with pytest.raises(FormatError, match=match) as e:
        call(w)
    assert "\n" not in str(e.value)


def test_quantizing_does_not_modify_the_weight():
    w, _, calib = linear_layer()
    before = w.clone()
    for v in VARIANTS:
        quantize_variant("nvfp4", v, w, calib)
    assert torch.equal(w, before)


@pytest.mark.parametrize("fmt_name", ["int8", "nvfp4", "int4", "int4-g64"])
def test_gptq_with_uncorrelated_inputs_is_the_formats_rounding_on_rtn_scales(fmt_name):
    # a diagonal hessian propagates no error: each weight is rounded on its own, with the stored (RTN) scales
    w, _, _ = linear_layer()
    diag = Calibration(x2=torch.ones(INP), xmax=torch.ones(INP), hessian=torch.diag(torch.rand(INP) + 0.5), rows=8)
    gptq, _ = quantize_variant(fmt_name, "gptq", w, diag)
    rtn = get_format(fmt_name).quantize(w)
    # int4 rounds on the stored float16 scale and zero (so that codes decode to what was compensated), RTN on the
    # float32 ones: the codes may differ where the two grids round apart; int8 and nvfp4 store what they round with
    assert torch.equal(unpack_codes(gptq), encode_grid(grid_of(rtn), w.double()))
    if not fmt_name.startswith("int4"):
        assert same_bits(gptq, rtn)
