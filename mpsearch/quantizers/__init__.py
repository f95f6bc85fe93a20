"""TEMPORARY (replaced at merge)."""
from mpsearch.quantizers.calibration import MAX_HESSIAN_COLS, Calibration, CalibrationAccumulator
from mpsearch.quantizers.candidate import packed_rows, quantize_candidate
