"""Calibrated quantizer variants of a format: ``nvfp4:clip``, ``int8:smooth``, ``int4:gptq``.

A variant writes valid codes of its base format (the same stored tensors, the same executor arithmetic) chosen
with statistics of the layer's inputs (:mod:`mpsearch.quantizers` holds the algorithms), or adds an exactly
counted extra:

* ``clip``: a clipping ratio per scale group (int8 row, int4 group, NVFP4 block) chosen to minimize the
  activation-weighted error of the layer's output; no extra bytes.
* ``gptq``: error-compensating rounding (GPTQ) with the base format's round-to-nearest scales; no extra bytes.
* ``smooth`` (formats that quantize activations: W8A8 ``int8``, W4A4 ``nvfp4``): a float32 factor per input
  channel ``s``, folded into the weight (codes of ``W * s``) and divided out of the activation before it is
  quantized; ``4 * in_channels`` extra bytes, stored beside the codes as ``smooth``.
* ``awq`` (the 4-bit weight formats ``int4``, ``nvfp4``): activation-aware factors per input channel (ModelOpt's
  AWQ-lite search), applied and stored exactly as ``smooth``'s.
* ``smooth-gptq`` (``int8``, ``nvfp4``): ``smooth``'s factors with GPTQ's rounding of ``W * s`` (the activation
  error moved into the weight, then the weight's error compensated); ``smooth``'s bytes, ``gptq``'s shape rule.

This module only names the variants and counts their bytes (formats are the only place that knows bits); a
variant's ``quantize`` needs calibration, so it goes through ``mpsearch.quantizers.quantize_candidate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.base import Format, Packed, matrix_shape
from mpsearch.formats.registry import get_format, register_instance

#: the calibrated variants besides plain round-to-nearest (no suffix)
VARIANTS = ("clip", "smooth", "gptq", "awq", "smooth-gptq")
#: the variants that store a float32 factor per input channel (``smooth``) and divide the activation by it
FACTOR_VARIANTS = ("smooth", "awq", "smooth-gptq")
#: the variants that need the input second-moment matrix (so at most MAX_HESSIAN_COLS input columns)
HESSIAN_VARIANTS = ("gptq", "smooth-gptq")
#: gptq needs the layer's input second-moment matrix (in_cols x in_cols), recorded only up to this many input
#: columns: 2304 columns are 21 MB in float32, and a real-size model has hundreds of layers
MAX_HESSIAN_COLS = 2304
#: the base formats that take variants
BASES = ("int8", "nvfp4", "int4")
SEPARATOR = ":"


def split_candidate(name: str) -> tuple[str, str | None]:
    """``"nvfp4:clip"`` -> ``("nvfp4", "clip")``; ``"nvfp4"`` -> ``("nvfp4", None)``."""
    base, sep, variant = str(name).partition(SEPARATOR)
    return base, (variant if sep else None)


def variant_applies(base: Format, variant: str) -> bool:
    """Whether ``variant`` is defined for ``base``: clip and gptq for every format with low-bit weights, smooth
    and smooth-gptq only for the formats that quantize activations, awq only for 4-bit weights."""
    if variant not in VARIANTS or base.name == "fp":
        return False
    if variant in ("smooth", "smooth-gptq"):
        return bool(base.quantizes_activations)
    if variant == "awq":
        return 0 < base.bits <= 4
    return True


def needs_hessian(fmt: Format) -> bool:
    """Whether ``fmt`` (a format or variant) is quantized with the input second-moment matrix (gptq,
    smooth-gptq)."""
    return getattr(fmt, "variant_name", None) in HESSIAN_VARIANTS


def uses_hessian(fmt: Format) -> bool:
    """Whether ``fmt`` (a format or variant) is quantized with the input second-moment matrix where it was
    recorded: gptq and smooth-gptq need it, awq scores its search with it (else with its diagonal)."""
    return getattr(fmt, "variant_name", None) in (*HESSIAN_VARIANTS, "awq")


def in_channels(shape: Sequence[int]) -> int:
    """The input channels of a Linear (in_features) or Conv (in_channels) weight of ``shape``."""
    matrix_shape(shape)
    return int(shape[1])


def factor_bytes(shape: Sequence[int]) -> int:
    """Bytes of a variant's float32 factor per input channel (:data:`FACTOR_VARIANTS`): ``4 * in_channels``."""
    return 4 * in_channels(shape)


class VariantFormat(Format):
    """``base`` quantized by ``variant``: the base's codes and bytes (plus ``smooth``'s factors)."""

    calibrated = True

    def __init__(self, base: Format, variant: str):
        if not variant_applies(base, variant):
            raise FormatError(f"variant {variant!r} does not apply to format {base.name!r}")
        self.base = base
        self.variant_name = variant
        self.name = f"{base.name}{SEPARATOR}{variant}"
        self.bits = base.bits
        self.quantizes_activations = base.quantizes_activations
        self.group = getattr(base, "group", None)

    @property
    def smooths(self) -> bool:
        """Whether the activation is divided by a stored factor per input channel (smooth, awq, smooth-gptq)."""
        return self.variant_name in FACTOR_VARIANTS

    def why_ineligible(self, shape: Sequence[int]) -> str | None:
        """The base format's reason, if any; gptq and smooth-gptq also need at most :data:`MAX_HESSIAN_COLS` input
        columns."""
        reason = self.base.why_ineligible(shape)
        if reason is None and needs_hessian(self) and matrix_shape(shape)[1] > MAX_HESSIAN_COLS:
            reason = (f"{self.variant_name} needs the input second moments, recorded for at most "
                      f"{MAX_HESSIAN_COLS} input columns (this layer has {matrix_shape(shape)[1]})")
        return reason

    def extra_bytes(self, shape: Sequence[int]) -> int:
        """Bytes stored besides the base format's codes: ``4 * in_channels`` for the factor variants, else 0."""
        return factor_bytes(shape) if self.smooths else 0

    def weight_bytes(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
        """The base format's bytes plus :meth:`extra_bytes`."""
        return self.base.weight_bytes(shape, dtype) + self.extra_bytes(shape)

    def quantize(self, w: torch.Tensor) -> Packed:
        """Refused: a variant needs the layer's calibration statistics."""
        raise FormatError(f"format {self.name!r} is a calibrated variant and needs the layer's input statistics; "
                          "quantize it with mpsearch.quantizers.quantize_candidate(name, weight, calibration)")

    def quantize_rows(self, w: torch.Tensor, rows: torch.Tensor) -> Packed:
        """Refused, as :meth:`quantize`."""
        return self.quantize(w)

    def base_packed(self, packed: Packed) -> Packed:
        """The base format's packed weight inside ``packed`` (without ``smooth``)."""
        if packed.format != self.name:
            raise FormatError(f"format {self.name!r} was given a weight packed as {packed.format!r}; use that format")
        return Packed(self.base.name, packed.shape, packed.dtype,
                      {k: t for k, t in packed.tensors.items() if k != "smooth"})

    def smoothing(self, packed: Packed) -> torch.Tensor | None:
        """The per-input-channel factor ``s`` (float32), or None for a variant without one."""
        return packed.tensors["smooth"] if self.smooths else None

    def dequantize(self, packed: Packed) -> torch.Tensor:
        """The weight the codes stand for: ``W`` itself, or ``W * s`` for smooth (the activation is divided by
        ``s``, so the product is the same)."""
        return self.base.dequantize(self.base_packed(packed))

    def quantize_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The base format's activation quantization (of the already divided activation)."""
        return self.base.quantize_activation(x)

    def matmul(self, x: torch.Tensor, packed: Packed, *, quantize_activations: bool | None = None,
               dequantized: torch.Tensor | None = None) -> torch.Tensor:
        """The base format's product of ``x / s`` (smooth) or ``x``."""
        s = self.smoothing(packed)
        if s is not None:
            x = divide_columns(x, s)
        return self.base.matmul(x, self.base_packed(packed), quantize_activations=quantize_activations,
                                dequantized=dequantized)

    def matmul_rows(self, x: torch.Tensor, packed: Packed, *, tensor_amax: torch.Tensor | float | None = None,
                    quantize_activations: bool | None = None,
                    dequantized: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of :meth:`matmul`; ``tensor_amax`` is the amax of the whole (divided) activation."""
        s = self.smoothing(packed)
        if s is not None:
            x = divide_columns(x, s)
        return self.base.matmul_rows(x, self.base_packed(packed), tensor_amax=tensor_amax,
                                     quantize_activations=quantize_activations, dequantized=dequantized)

    def matmul_patches(self, x: torch.Tensor, packed: Packed, kernel: Sequence[int], dilation: Sequence[int],
                       padding: Sequence[int], stride: Sequence[int], *,
                       quantize_activations: bool | None = None,
                       dequantized: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
        """The base format's conv of ``x`` divided per input channel by ``s`` (smooth) or of ``x``."""
        s = self.smoothing(packed)
        if s is not None:
            x = divide_input(x, s, channel_dim=1)
        return self.base.matmul_patches(x, self.base_packed(packed), kernel, dilation, padding, stride,
                                        quantize_activations=quantize_activations, dequantized=dequantized)


def divide_input(x: torch.Tensor, s: torch.Tensor, *, channel_dim: int) -> torch.Tensor:
    """``x`` divided by ``s`` along ``channel_dim`` (-1 for a Linear's input, 1 for NCHW)."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return x / s.to(x.dtype).reshape(shape)


def register_variants() -> None:
    """Register every applicable (base format, variant) pair as a format named ``base:variant``."""
    for base_name in BASES:
        base = get_format(base_name)
        for variant in VARIANTS:
            if variant_applies(base, variant):
                register_instance(VariantFormat(base, variant))


def candidate_names(formats: Sequence[str], variants: Sequence[str]) -> list[str]:
    """``formats`` followed by each applicable ``format:variant`` (in ``variants`` order, per format)."""
    out = list(formats)
    for f in formats:
        base = get_format(f)
        for v in variants:
            if v not in VARIANTS:
                raise FormatError(f"unknown quantizer variant {v!r}; expected one of {', '.join(VARIANTS)}")
            name = f"{f}{SEPARATOR}{v}"
            if variant_applies(base, v) and name not in out:
                out.append(name)
    return out


def expand_factors(s: torch.Tensor, in_cols: int) -> torch.Tensor:
    """s per matrix column: each channel's factor repeated over its ``in_cols // len(s)`` im2col columns."""
    if in_cols % s.shape[0]:
        raise FormatError(f"{s.shape[0]} smoothing factors cannot cover {in_cols} input columns; expected a "
                          f"divisor (channels x kernel area)")
    k = in_cols // s.shape[0]
    return s if k == 1 else s.repeat_interleave(k)


def divide_columns(x2: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """A 2-D ``x2`` (rows, in_cols) divided per input channel by ``s``: for a conv's im2col rows (``in_cols`` =
    channels * kernel area, channel-major) each channel's factor covers its kernel area."""
    return x2 / expand_factors(s, x2.shape[-1]).to(x2.dtype)


def variant_layers(assignment: dict[str, str]) -> list[str]:
    """The layers of ``assignment`` (name -> format) that take a calibrated variant."""
    return [n for n, f in assignment.items() if split_candidate(f)[1] is not None]
