"""End-to-end tier: metric-decoupled sensitivity of chosen layers, groups and step windows (MixDQ / ViDiT-Q).

A *unit* quantizes one target (a layer, or a group of layers: a block, a role, a plan) in one format,
optionally only within a window of denoising steps, generates with the profile's seeds and conditions, and
scores the images against the full-precision images under content metrics (SSIM; agreement with the
requested condition) and quality metrics (image PSNR and SQNR; Frechet distance in a feature space). Every
metric is stored separately in the profile file, one unit per transaction, so a killed run resumes:

  e2e_runs(run, config)                        one row per measuring setup (seeds, steps, scorer, features)
  e2e_units(run, unit, layers, format, start, stop, kind, seconds)
  e2e(run, unit, metric, value)                raw metric values; the "fp" unit holds full precision's own

Old profiles have none of these tables and load as before; ``merge_profiles`` copies the local tier only.

Cheap: :func:`shortlist` picks what to measure from the local tier (layers whose format flips across a
sweep of budgets, ranked by local sensitivity x bytes saved), and :func:`window_units` measures the mid-budget
local plan per step window (one generation per window, not per layer). :func:`e2e_costs` turns the
measurements into the decoupled objective: per metric a damage (>= 0), normalized by its largest value;
content and quality metrics averaged within their kind and combined with the user's weights. Layers not
measured get an estimate from the local tier, calibrated on the measured ones (a least-squares line between
log local cost and log damage, per metric; see :func:`calibrate`).

Layout (data flows down the list): ``units`` (what a measurement quantizes), ``scores`` (image metrics and
damage), ``results`` (the tables and reading them), ``measuring`` (generating and storing), ``selection``
(the shortlist and window units), ``run`` (the cheap tier in one call, Spearman agreement), ``costs`` (the
decoupled objective). Every name is importable from ``mpsearch.allocation.endtoend``.
"""

# also importable here, as from the old single module, though not in __all__: budget_sweep and
# window_step_weights, and _combine (scripts/bench_e2e.py uses e2e._combine)
from mpsearch.allocation.endtoend.costs import _combine, activation_overrides, calibrate, e2e_costs, parse_weights, window_step_weights  # noqa: F401
from mpsearch.profiling.endtoend.measuring import measure, quantized
from mpsearch.profiling.endtoend.results import E2EResults, load_results
from mpsearch.allocation.endtoend.run import run_end_to_end, spearman
from mpsearch.profiling.endtoend.scores import METRIC_KIND, OBJECTIVE_METRICS, damage, default_scorers, score_images
from mpsearch.allocation.endtoend.selection import budget_sweep, shortlist, window_units  # noqa: F401
from mpsearch.profiling.endtoend.units import FP_UNIT, Unit, exhaustive_units, group_units, layer_units, step_windows

__all__ = ["Unit", "FP_UNIT", "measure", "load_results", "E2EResults", "shortlist", "window_units", "spearman",
           "run_end_to_end", "e2e_costs", "calibrate", "parse_weights", "activation_overrides", "exhaustive_units",
           "group_units", "layer_units", "step_windows", "score_images", "default_scorers", "quantized",
           "METRIC_KIND", "OBJECTIVE_METRICS", "damage"]
