"""The metric-decoupled objective (MixDQ / ViDiT-Q): which layers, groups and step windows the end-to-end tier
measures, and what its measurements cost in the solver's objective (the measuring itself is
:mod:`mpsearch.profiling.endtoend`'s).

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

Layout: :mod:`mpsearch.profiling.endtoend` measures (``units``: what a measurement quantizes, ``scores``:
image metrics and damage, ``results``: the tables, ``measuring``: generating and storing); this package decides
with it: ``selection`` (the shortlist and window units), ``run`` (the cheap tier in one call, Spearman
agreement), ``costs`` (the decoupled objective).
"""

from mpsearch.allocation.decoupled.costs import (
                                                 activation_overrides,
                                                 calibrate,
                                                 combine,
                                                 e2e_costs,
                                                 parse_weights,
                                                 window_step_weights,
)
from mpsearch.allocation.decoupled.run import run_end_to_end, spearman
from mpsearch.allocation.decoupled.selection import budget_sweep, shortlist, window_units

__all__ = ["activation_overrides", "budget_sweep", "calibrate", "combine", "e2e_costs", "parse_weights",
           "run_end_to_end", "shortlist", "spearman", "window_step_weights", "window_units"]
