"""The quantizer variants' catalogue: the only place that knows their names.

A variant writes valid codes of its base format (the same ``Packed`` tensors, dtypes and bytes as
``fmt.quantize(w)``), chosen with calibration statistics of the layer's inputs; plain round-to-nearest is the
empty variant ``""``. The variants (definitions in their modules):

- ``clip`` (:mod:`.clip`): a clip ratio per scale group minimizing the activation-weighted error; int8, nvfp4,
  int4 (any group size).
- ``smooth`` (:mod:`.smooth`): SmoothQuant factors s per input channel, codes of W*s, run as Qact(x/s) @ Q(Ws)^T;
  only formats that quantize activations (int8, nvfp4); s costs 4 bytes per input channel.
- ``gptq`` (:mod:`.gptq`): GPTQ error-compensating rounding on RTN's scales; int8, nvfp4, int4; needs the hessian.
- ``smooth-gptq`` (:mod:`.smooth`): smooth's factors, GPTQ's rounding of W*s against the divided input's
  hessian; int8, nvfp4; s costs 4 bytes per input channel; needs the hessian.
- ``awq`` (:mod:`.awq`): AWQ-lite factors s per input channel (alpha searched on the weight-only output error),
  run as ``smooth`` is; the 4-bit weight formats (nvfp4, int4); s costs 4 bytes per input channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpsearch.errors import FormatError
from mpsearch.formats import Packed, get_format, matrix_shape
from mpsearch.formats.variant import FACTOR_VARIANTS, HESSIAN_VARIANTS, factor_bytes
from mpsearch.formats.variant import VARIANTS as _VARIANTS
from mpsearch.formats.variant import variant_applies as format_takes_variant
from mpsearch.quantizers.awq import awq_quantize
from mpsearch.quantizers.calibration import Calibration
from mpsearch.quantizers.clip import clip_quantize
from mpsearch.quantizers.codes import kind_of
from mpsearch.quantizers.gptq import gptq_quantize
from mpsearch.quantizers.smooth import smooth_gptq_quantize, smooth_quantize

VARIANTS = _VARIANTS  # named once, with the formats' registry of ``base:variant`` names


def _check_variant(variant: str) -> None:
    if variant != "" and variant not in VARIANTS:
        raise FormatError(f"unknown quantizer variant {variant!r}; expected one of {', '.join(VARIANTS)} "
                          f"(or none, for round-to-nearest)")


def variant_applies(fmt_name: str, variant: str) -> bool:
    """Whether ``variant`` can quantize weights of format ``fmt_name`` ("" = RTN applies to every format).
    FormatError for an unknown format or variant name."""
    _check_variant(variant)
    fmt = get_format(fmt_name)
    if variant == "":
        return True
    try:
        kind_of(fmt)
    except FormatError:
        return False  # fp and other formats without codes
    return format_takes_variant(fmt, variant)  # the rule, stated once with the formats' registry


def needs_hessian(variant: str) -> bool:
    """Whether ``variant`` needs ``Calibration.hessian`` (gptq, smooth-gptq)."""
    _check_variant(variant)
    return variant in HESSIAN_VARIANTS


def _check_applies(fmt_name: str, variant: str) -> None:
    if not variant_applies(fmt_name, variant):
        need = {"smooth": "a format that quantizes activations (int8, nvfp4)",
                "smooth-gptq": "a format that quantizes activations (int8, nvfp4)",
                "awq": "a 4-bit weight format (nvfp4, int4)"}.get(variant, "int8, nvfp4 or int4")
        raise FormatError(f"quantizer variant {variant!r} does not apply to format {fmt_name!r}; it needs {need}: "
                          f"pick another variant or format")


def extra_bytes(fmt_name: str, variant: str, shape: Sequence[int]) -> int:
    """Bytes the variant stores beside the format's ``weight_bytes(shape)``: smooth's and awq's float32 factor per
    input channel (``shape[1]``), 0 for the others."""
    _check_applies(fmt_name, variant)
    matrix_shape(shape)
    if variant not in FACTOR_VARIANTS:  # the other variants store exactly their base format's tensors
        return 0
    return factor_bytes(shape)  # counted where the bits are (any group size of the base format)


def _check_calibration(w: torch.Tensor, calib: Calibration, variant: str) -> None:
    if not isinstance(calib, Calibration):
        raise FormatError(f"quantizer variant {variant!r} needs a Calibration of the layer's inputs, got "
                          f"{type(calib).__name__}; build one with CalibrationAccumulator")
    _, in_cols = matrix_shape(w.shape)
    in_channels = int(w.shape[1])
    if calib.in_cols != in_cols or calib.in_channels != in_channels:
        raise FormatError(f"calibration of {calib.in_cols} input columns / {calib.in_channels} channels does not fit "
                          f"a weight of shape {tuple(w.shape)} (expected {in_cols} / {in_channels}); calibrate "
                          f"this layer's own inputs")
    if variant in HESSIAN_VARIANTS and calib.hessian is None:
        raise FormatError(f"quantizer variant {variant!r} needs the input hessian, which was not recorded for this "
                          f"layer ({in_cols} input columns); use clip, or record it (in_cols <= MAX_HESSIAN_COLS)")


def quantize_variant(fmt_name: str, variant: str, w: torch.Tensor, calib: Calibration,
                     rows: torch.Tensor | None = None) -> tuple[Packed, torch.Tensor | None]:
    """(packed codes of the base format ``fmt_name`` for ``w``, input factors float32 (in_channels,) for
    ``smooth`` and ``awq``, else None). The packed weight has exactly ``fmt.quantize(w)``'s tensors, dtypes and shapes;
    the same inputs give bit-identical outputs. FormatError (one line) for a variant that does not apply to the
    format, a calibration of the wrong size, gptq without a hessian, or what ``fmt.quantize`` refuses.

    ``rows`` (output channels): only those rows, packed as ``fmt.quantize_rows`` packs them (the whole weight's
    tensor scale, smoothing factors from the whole weight), for the profiler's sampled statistics at a fraction
    of the cost; every variant decides each row on its own, so they are the whole weight's rows (gptq's up to
    the float rounding of a smaller matrix product)."""
    _check_applies(fmt_name, variant)
    fmt = get_format(fmt_name)
    fmt.check_eligible(w.shape)
    if variant == "":
        return (fmt.quantize(w) if rows is None else fmt.quantize_rows(w, rows)), None
    _check_calibration(w, calib, variant)
    if variant == "smooth":
        fmt.quantize(w)  # w itself must be quantizable (finite, in range): the same errors as RTN
        return smooth_quantize(fmt, w, calib.xmax, rows=rows)
    if variant == "awq":
        fmt.quantize(w)
        return awq_quantize(fmt, w, calib, rows=rows)
    if variant == "smooth-gptq":
        fmt.quantize(w)
        assert calib.hessian is not None
        return smooth_gptq_quantize(fmt, w, calib.xmax, calib.hessian, rows=rows)
    if variant == "gptq":
        assert calib.hessian is not None
        return gptq_quantize(fmt, w, calib.hessian, rows=rows), None
    fmt.quantize(w)  # refuses what RTN refuses (NaN/inf, float16 overflow of int4's scales) with its message
    return clip_quantize(fmt, w, calib.x2, rows=rows), None
