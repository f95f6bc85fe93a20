"""Calibrated quantizer variants: valid codes of a base format chosen with statistics of the layer's inputs.

Pure functions over a weight and a :class:`Calibration`; the profiler, plan and executor use them by the names
of :data:`VARIANTS` (``"nvfp4:clip"`` in a plan). Definitions: :mod:`.clip`, :mod:`.smooth`, :mod:`.gptq`.
"""

from mpsearch.quantizers.calibration import MAX_HESSIAN_COLS, Calibration, CalibrationAccumulator
from mpsearch.quantizers.clip import CLIP_GRID, clip_quantize
from mpsearch.quantizers.codes import reencode
from mpsearch.quantizers.gptq import gptq_quantize
from mpsearch.quantizers.smooth import expand_factors, smooth_quantize, smoothed_matmul, smoothing_factors
from mpsearch.quantizers.variants import VARIANTS, extra_bytes, needs_hessian, quantize_variant, variant_applies

__all__ = [
    "Calibration",
    "CalibrationAccumulator",
    "MAX_HESSIAN_COLS",
    "VARIANTS",
    "CLIP_GRID",
    "variant_applies",
    "needs_hessian",
    "extra_bytes",
    "quantize_variant",
    "smoothed_matmul",
    "smoothing_factors",
    "expand_factors",
    "clip_quantize",
    "smooth_quantize",
    "gptq_quantize",
    "reencode",
]
