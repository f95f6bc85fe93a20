"""Feature caching: which denoising steps recompute which blocks, and which reuse cached features.

* :mod:`~mpsearch.cache.units`: cacheable units per architecture (DeepCache-style deep path of a UNet, the
  residual of a transformer's middle blocks), by exact module name, with their share of compute.
* :mod:`~mpsearch.cache.scheduler`: the dynamic-programming scheduler and the uniform / threshold baselines
  behind one interface, and a brute-force oracle.
* :mod:`~mpsearch.cache.measure`: the reuse costs, measured on the (quantized) model.
* :mod:`~mpsearch.cache.hooks`: the runtime cache, through diffusers' hook registry.
* :mod:`~mpsearch.cache.joint`: a plan's cache section, and quantization and caching solved together.
* :mod:`~mpsearch.cache.section`: the plan ``cache`` section's schema.
"""

from .scheduler import (METHODS, Schedule, ScheduleProblem, full_computations_for_speedup, ideal_speedup,
                        is_feasible, make_schedule, schedule_bruteforce, schedule_dp, schedule_error,
                        schedule_threshold, schedule_uniform)
from .section import validate_cache_section
from .units import CacheUnit, cache_units, compute_shares, get_unit

__all__ = ["METHODS", "Schedule", "ScheduleProblem", "full_computations_for_speedup", "ideal_speedup",
           "is_feasible", "make_schedule", "schedule_bruteforce", "schedule_dp", "schedule_error",
           "schedule_threshold", "schedule_uniform", "validate_cache_section", "CacheUnit", "cache_units",
           "compute_shares", "get_unit", "FeatureCacheConfig", "apply_feature_cache", "measure_costs",
           "schedule_cache", "solve_joint"]

_LAZY = {"FeatureCacheConfig": "hooks", "apply_feature_cache": "hooks", "FeatureCacheHandle": "hooks",
         "measure_costs": "measure", "costs_from_profile": "measure", "schedule_cache": "joint",
         "solve_joint": "joint", "cache_section": "joint"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mpsearch.cache' has no attribute {name!r}")
