"""The ``cache`` section of a plan: its schema and validation.

    cache:
      method: dp                  # dp | uniform | threshold: how the schedule was chosen
      unit:                       # what is reused, by exact module name (see mpsearch.cache_units)
        name: deep@down_blocks.0
        kind: unet-deep           # unet-deep | transformer-residual
        modules: [down_blocks.1, down_blocks.2, mid_block, up_blocks.0, up_blocks.1]
      compute: [true, true, false, ...]   # one per denoising step: computed in full (true) or reused
      warmup: 2                   # the first steps that are always computed
      max_reuse: null             # at most this many consecutive reuses (null: no limit)
      costs: measured             # measured | measured-quantized | profile: where the reuse costs came from
      predicted_error: 0.0123     # sum of the reuse costs of the schedule
      share: 0.64                 # fraction of a step's FLOPs the unit skips (null if unknown)
"""

from __future__ import annotations

from mpsearch.cache_units import CacheUnit
from mpsearch.errors import PlanError

METHODS = ("dp", "uniform", "threshold")
COST_SOURCES = ("measured", "measured-quantized", "profile")
REQUIRED = ("method", "unit", "compute")
OPTIONAL = ("warmup", "max_reuse", "costs", "predicted_error", "share")


def validate_cache_section(cache: object) -> None:
    """Raise PlanError (naming the field, the value and the fix) unless ``cache`` is a valid cache section."""

    where = "plan cache"
    if not isinstance(cache, dict):
        raise PlanError(
            f"{where} must be a mapping with keys {', '.join(REQUIRED + OPTIONAL)}; got {type(cache).__name__}"
        )
    unknown = [k for k in cache if k not in REQUIRED + OPTIONAL]
    if unknown:
        raise PlanError(f"{where} has unknown key {unknown[0]!r}; allowed keys: {', '.join(REQUIRED + OPTIONAL)}")
    missing = [k for k in REQUIRED if k not in cache]
    if missing:
        raise PlanError(f"{where} lacks the key {missing[0]!r}; "
                        "regenerate it with `mpsearch solve --full-computations K`")
    if cache["method"] not in METHODS:
        raise PlanError(f"{where}.method is {cache['method']!r}; expected one of {', '.join(METHODS)}")
    CacheUnit.from_dict(cache["unit"], f"{where}.unit")
    compute = cache["compute"]
    if not isinstance(compute, list) or not compute or not all(isinstance(c, bool) for c in compute):
        raise PlanError(f"{where}.compute must be a non-empty list of booleans, one per step; got {compute!r}")
    warmup = cache.get("warmup", 1)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise PlanError(f"{where}.warmup must be an integer >= 1, got {warmup!r}")
    max_reuse = cache.get("max_reuse")
    if max_reuse is not None and (isinstance(max_reuse, bool) or not isinstance(max_reuse, int) or max_reuse < 1):
        raise PlanError(f"{where}.max_reuse must be an integer >= 1 or null, got {max_reuse!r}")
    S = len(compute)
    if not all(compute[:min(warmup, S)]) or not compute[-1]:
        raise PlanError(f"{where}.compute must compute the first {warmup} (warm-up) steps and the last step; "
                        f"got {compute!r}")
    run = longest = 0
    for c in compute:
        run = 0 if c else run + 1
        longest = max(longest, run)
    if max_reuse is not None and longest > max_reuse:
        raise PlanError(f"{where}.compute reuses {longest} steps in a row, more than max_reuse={max_reuse}")
    if cache.get("costs", "measured") not in COST_SOURCES:
        raise PlanError(f"{where}.costs is {cache['costs']!r}; expected one of {', '.join(COST_SOURCES)}")
    for key in ("predicted_error", "share"):
        v = cache.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise PlanError(f"{where}.{key} must be a number or null, got {v!r}")
