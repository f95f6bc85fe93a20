"""One entry point for every candidate's codes: a plain format's ``quantize`` or a calibrated variant's."""

from __future__ import annotations

import torch

from mpsearch.errors import FormatError
from mpsearch.formats import Packed, get_format
from mpsearch.formats.variant import FACTOR_VARIANTS, split_candidate
from mpsearch.quantizers.calibration import Calibration
from mpsearch.quantizers.variants import quantize_variant

#: tensors of a packed weight that are not per output row (kept whole when rows are taken)
_WHOLE = ("tensor_scale", "smooth")


def quantize_candidate(name: str, w: torch.Tensor, calibration: Calibration | None = None,
                       rows: torch.Tensor | None = None) -> Packed:
    """``w`` packed as the candidate ``name``: a format (``nvfp4``) or a calibrated variant (``nvfp4:clip``,
    which needs the layer's ``calibration``). A variant's packed weight is named after the variant and holds
    the base format's tensors (plus ``smooth``, the input factors of ``smooth`` and ``awq``). ``rows``: only
    those output channels, as the whole weight packs them (``quantize_rows``; the profiler's sampled statistics)."""
    base, variant = split_candidate(name)
    fmt = get_format(name)
    if variant is None:
        return fmt.quantize(w) if rows is None else fmt.quantize_rows(w, rows)
    if calibration is None:
        raise FormatError(f"format {name!r} is a calibrated variant and needs the layer's input statistics, which "
                          "were not given; profile with variants (the default) and solve from that profile")
    fmt.check_eligible(w.shape)
    packed, s = quantize_variant(base, variant, w, calibration, rows=rows)
    tensors = dict(packed.tensors)
    if s is not None:
        tensors["smooth"] = s.to(torch.float32).contiguous()
    return Packed(name, packed.shape, w.dtype, tensors)


def packed_rows(packed: Packed, rows: torch.Tensor) -> Packed:
    """Rows ``rows`` (output channels) of a packed weight: exactly the codes and scales the whole weight gives
    them. Its shape is ``(len(rows), in)``."""
    out = packed.shape[0]
    inp = 1
    for d in packed.shape[1:]:
        inp *= d
    tensors = {}
    for k, t in packed.tensors.items():
        if k in _WHOLE:
            tensors[k] = t
        elif t.shape[0] == out:
            tensors[k] = t[rows.to(t.device)]
        else:
            raise FormatError(f"packed tensor {k!r} of shape {tuple(t.shape)} is not per output row; cannot take rows")
    return Packed(packed.format, (len(rows), inp), packed.dtype, tensors)


def timing_stand_in(name: str, w: torch.Tensor) -> Packed:
    """A packed weight that runs exactly the arithmetic of candidate ``name`` (for timing, not for its error):
    the base format's round-to-nearest codes, and for ``smooth`` and ``awq`` factors of 1 (the division still runs)."""
    base, variant = split_candidate(name)
    packed = get_format(base).quantize(w)
    if variant is None:
        return packed
    tensors = dict(packed.tensors)
    if variant in FACTOR_VARIANTS:
        tensors["smooth"] = torch.ones(int(w.shape[1]), dtype=torch.float32, device=w.device)
    return Packed(name, packed.shape, packed.dtype, tensors)
