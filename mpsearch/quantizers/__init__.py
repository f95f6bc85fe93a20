"""Calibrated quantizer variants: valid codes of a base format chosen with statistics of the layer's inputs.

Pure functions over a weight and a :class:`Calibration`; the profiler, plan and executor use them by the names
of :data:`VARIANTS` (``"nvfp4:clip"`` in a plan). Definitions: :mod:`.clip`, :mod:`.smooth`, :mod:`.gptq`, :mod:`.awq`;
:func:`quantize_candidate` is the one entry point for a candidate's codes (a format or a variant);
:mod:`.calibration_file` the plan's calibration file.
"""

from mpsearch.quantizers.awq import ALPHAS, awq_quantize, awq_scale
from mpsearch.quantizers.calibration import MAX_HESSIAN_COLS, Calibration, CalibrationAccumulator
from mpsearch.quantizers.candidate import packed_rows, quantize_candidate, timing_stand_in
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
    "awq_quantize",
    "awq_scale",
    "ALPHAS",
    "reencode",
    "quantize_candidate",
    "packed_rows",
    "timing_stand_in",
]
