"""TEMPORARY stand-in (replaced by the quant branch at merge): RTN codes; smooth really smooths."""
from __future__ import annotations

from mpsearch.formats import get_format


def quantize_variant(fmt_name, variant, w, calib):
    fmt = get_format(fmt_name)
    if variant != "smooth":
        return fmt.quantize(w), None
    wmax = w.detach().abs().transpose(0, 1).reshape(w.shape[1], -1).amax(1).float()
    s = (calib.xmax.clamp_min(1e-12).sqrt() / wmax.clamp_min(1e-12).sqrt()).clamp(1e-5, 1e5)
    shape = [1, -1] + [1] * (w.dim() - 2)
    return fmt.quantize(w * s.reshape(shape).to(w.dtype)), s
