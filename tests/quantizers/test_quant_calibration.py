"""CalibrationAccumulator against direct computations; Calibration's validation."""

from __future__ import annotations

import pytest
import torch
from helpers_quant import conv_rows

from mpsearch.errors import FormatError, MpsearchError
from mpsearch.quantizers import MAX_HESSIAN_COLS, Calibration, CalibrationAccumulator


def test_linear_statistics_match_a_direct_computation_over_several_adds():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 24, generator=g) * torch.linspace(0.1, 5.0, 24)
    acc = CalibrationAccumulator(24, 24)
    for part in (x[:100], x[100:101], x[101:101], x[101:]):  # uneven chunks, an empty one included
        acc.add(part)
    c = acc.result()
    x64 = x.to(torch.float64)
    assert c.rows == 300 and c.in_cols == 24 and c.in_channels == 24
    assert c.x2.dtype == c.xmax.dtype == c.hessian.dtype == torch.float32
    torch.testing.assert_close(c.x2, (x64**2).mean(0).float(), rtol=1e-6, atol=0)
    assert torch.equal(c.xmax, x.abs().amax(0))
    torch.testing.assert_close(c.hessian, (x64.t() @ x64 / 300).float(), rtol=1e-6, atol=1e-7)
    assert torch.equal(c.hessian, c.hessian.t())


def test_conv_channel_max_is_taken_over_each_channels_kernel_columns():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 5, 6, 6, generator=g) * torch.tensor([1.0, 9.0, 0.5, 3.0, 0.0])[None, :, None, None]
    rows = conv_rows(img)  # (2*6*6, 5*9)
    acc = CalibrationAccumulator(45, 5, kernel_area=9)
    acc.add(rows.to(torch.float16).to(torch.float32))
    acc.add(rows)
    c = acc.result()
    assert c.xmax.shape == (5,) and c.x2.shape == (45,) and c.hessian.shape == (45, 45)
    # per input channel, the max over the image (padding zeros never exceed it) and its float16 copy
    expect = torch.maximum(img.abs().amax(dim=(0, 2, 3)), img.half().float().abs().amax(dim=(0, 2, 3)))
    assert torch.equal(c.xmax, expect)
    assert c.xmax[4] == 0
    both = torch.cat([rows.to(torch.float16).to(torch.float32), rows]).to(torch.float64)
    torch.testing.assert_close(c.x2, (both**2).mean(0).float(), rtol=1e-6, atol=0)


def test_rows_that_require_grad_are_accumulated_without_a_graph():
    x = torch.randn(5, 4, requires_grad=True)
    acc = CalibrationAccumulator(4, 4)
    acc.add(x * 2)
    c = acc.result()
    assert not (c.x2.requires_grad or c.xmax.requires_grad or c.hessian.requires_grad)


def test_hessian_is_recorded_only_up_to_the_limit_or_when_asked():
    assert not CalibrationAccumulator(MAX_HESSIAN_COLS + 16, MAX_HESSIAN_COLS + 16).records_hessian
    assert CalibrationAccumulator(MAX_HESSIAN_COLS, MAX_HESSIAN_COLS).records_hessian
    acc = CalibrationAccumulator(8, 8, hessian=False)
    acc.add(torch.ones(3, 8))
    assert acc.result().hessian is None


@pytest.mark.parametrize("rows, match", [
    (torch.ones(4, 7), r"must be 2-D \(n, 8\), got \(4, 7\)"),
    (torch.ones(8), r"must be 2-D"),
    (torch.full((2, 8), float("nan")), "NaN/inf"),
    (torch.ones(2, 8, dtype=torch.int32), "finite floats"),
])
def test_bad_rows_are_one_line_errors(rows, match):
    acc = CalibrationAccumulator(8, 8)
    with pytest.raises(FormatError, match=match) as e:
        acc.add(rows)
    assert "\n" not in str(e.value)


def test_result_without_rows_and_bad_sizes_are_errors():
    with pytest.raises(FormatError, match="no calibration rows"):
        CalibrationAccumulator(8, 8).result()
    with pytest.raises(FormatError, match="in_cols = in_channels \\* kernel_area"):
        CalibrationAccumulator(10, 3, kernel_area=3)


def _ok(**kw):
    base = dict(x2=torch.ones(6), xmax=torch.ones(2), hessian=torch.eye(6), rows=3)
    base.update(kw)
    return Calibration(**base)


@pytest.mark.parametrize("kw, match", [
    (dict(x2=torch.ones(6, dtype=torch.float64)), "x2 must be a 1-D float32"),
    (dict(x2=torch.ones(2, 3)), "x2 must be a 1-D float32"),
    (dict(x2=-torch.ones(6)), "x2 must be finite and non-negative"),
    (dict(xmax=torch.tensor([1.0, float("inf")])), "xmax must be finite"),
    (dict(xmax=torch.ones(4)), "6 input columns and 4 input channels"),
    (dict(hessian=torch.eye(5)), r"hessian must be a float32 \(6, 6\)"),
    (dict(hessian=torch.ones(6, 3)), r"hessian must be a float32 \(6, 6\)"),
    (dict(hessian=torch.full((6, 6), float("nan"))), "hessian has NaN/inf"),
    (dict(rows=0), "rows must be an int >= 1"),
    (dict(rows=True), "rows must be an int >= 1"),
])
def test_calibration_validates_its_fields(kw, match):
    with pytest.raises(MpsearchError, match=match) as e:
        _ok(**kw)
    assert isinstance(e.value, FormatError) and "\n" not in str(e.value)


def test_a_valid_calibration_is_frozen():
    c = _ok(hessian=None)
    with pytest.raises(AttributeError):
        c.rows = 5  # type: ignore[misc]
