"""The end-to-end tier's measurements: what a unit quantizes (:mod:`.units`), image scores and damage
(:mod:`.scores`), the profile's e2e tables (:mod:`.results`), and generating and storing (:mod:`.measuring`).
Choosing what to measure and turning measurements into costs is allocation's: :mod:`mpsearch.allocation.decoupled`.
"""

from mpsearch.profiling.endtoend.measuring import measure, quantized
from mpsearch.profiling.endtoend.results import E2EResults, load_results
from mpsearch.profiling.endtoend.scores import METRIC_KIND, OBJECTIVE_METRICS, damage, default_scorers, score_images
from mpsearch.profiling.endtoend.units import FP_UNIT, Unit, exhaustive_units, group_units, layer_units, step_windows

__all__ = ["E2EResults", "FP_UNIT", "METRIC_KIND", "OBJECTIVE_METRICS", "Unit", "damage", "default_scorers",
           "exhaustive_units", "group_units", "layer_units", "load_results", "measure", "quantized", "score_images",
           "step_windows"]
