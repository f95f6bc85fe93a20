"""Old module paths (before the stage packages) keep working for a release, with a DeprecationWarning that
names the new one: ``import mpsearch.profile_store`` gives the module ``mpsearch.profiling.store``.

``mpsearch.solve`` is not aliased: it is the public function, and a module of the same name would hide it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED = {
    "mpsearch.qmodules": "mpsearch.runtime.qmodules",
    "mpsearch.executor": "mpsearch.runtime.executor",
    "mpsearch.generation": "mpsearch.runtime.generation",
    "mpsearch.cache.hooks": "mpsearch.runtime.cache_hooks",
    "mpsearch.cache.units": "mpsearch.cache_units",
    "mpsearch.cache.section": "mpsearch.cache_section",
    "mpsearch.cache.measure": "mpsearch.profiling.cache_costs",
    "mpsearch.cache.scheduler": "mpsearch.allocation.cache_scheduler",
    "mpsearch.cache.joint": "mpsearch.allocation.joint",
    "mpsearch.profiler": "mpsearch.workflow",
    "mpsearch.profile_store": "mpsearch.profiling.store",
    "mpsearch.sensitivity": "mpsearch.profiling.sensitivity",
    "mpsearch.latency": "mpsearch.profiling.latency",
    "mpsearch.endtoend": "mpsearch.allocation.endtoend",
    "mpsearch.endtoend.units": "mpsearch.profiling.endtoend.units",
    "mpsearch.endtoend.scores": "mpsearch.profiling.endtoend.scores",
    "mpsearch.endtoend.results": "mpsearch.profiling.endtoend.results",
    "mpsearch.endtoend.measuring": "mpsearch.profiling.endtoend.measuring",
    "mpsearch.endtoend.selection": "mpsearch.allocation.endtoend.selection",
    "mpsearch.endtoend.costs": "mpsearch.allocation.endtoend.costs",
    "mpsearch.endtoend.run": "mpsearch.allocation.endtoend.run",
    "mpsearch.formulate": "mpsearch.allocation.formulation",
    "mpsearch.solver": "mpsearch.allocation.solvers",
    "mpsearch.pareto": "mpsearch.allocation.pareto",
    "mpsearch.refine": "mpsearch.allocation.refine",
    "mpsearch.compute": "mpsearch.allocation.compute",
    "mpsearch.baselines": "mpsearch.allocation.baselines",
    "mpsearch.archs.tiny": "mpsearch.testing",
}
# the old package mpsearch.cache re-exported names from modules that now live in three stages
CACHE_NAMES = {
    "allocation.cache_scheduler": (
        "METHODS", "Schedule", "ScheduleProblem", "full_computations_for_speedup", "ideal_speedup", "is_feasible",
        "make_schedule", "schedule_bruteforce", "schedule_dp", "schedule_error", "schedule_threshold",
        "schedule_uniform"),
    "cache_section": ("validate_cache_section",),
    "cache_units": ("CacheUnit", "cache_units", "compute_shares", "get_unit"),
    "runtime.cache_hooks": ("FeatureCacheConfig", "apply_feature_cache", "FeatureCacheHandle"),
    "profiling.cache_costs": ("measure_costs", "costs_from_profile"),
    "allocation.joint": ("schedule_cache", "solve_joint", "cache_section"),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in the next release; import {new} instead",
                  DeprecationWarning, stacklevel=3)


def _cache_package() -> types.ModuleType:
    mod = types.ModuleType("mpsearch.cache", "Deprecated: feature caching now lives in mpsearch.cache_units, "
                                             "mpsearch.runtime.cache_hooks, mpsearch.profiling.cache_costs and "
                                             "mpsearch.allocation.cache_scheduler / joint.")
    where = {name: module for module, names in CACHE_NAMES.items() for name in names}

    def __getattr__(name):
        if name in where:
            return getattr(importlib.import_module(f"mpsearch.{where[name]}"), name)
        raise AttributeError(f"module 'mpsearch.cache' has no attribute {name!r}")

    mod.__getattr__ = __getattr__
    mod.__all__ = sorted(where)
    mod.__path__ = []  # a package, so that mpsearch.cache.<old submodule> resolves through MOVED
    return mod


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, old: str):
        self.old = old

    def create_module(self, spec):
        if self.old == "mpsearch.cache":
            _warn("mpsearch.cache", "its names from mpsearch.cache_units, mpsearch.runtime.cache_hooks, "
                                    "mpsearch.profiling.cache_costs or mpsearch.allocation.cache_scheduler/joint")
            return _cache_package()
        new = MOVED[self.old]
        _warn(self.old, new)
        module = importlib.import_module(f"mpsearch.{new.removeprefix('mpsearch.')}")
        self.saved = {k: getattr(module, k) for k in ("__name__", "__spec__", "__loader__", "__package__")}
        return module

    def exec_module(self, module):
        # the import system stamps the alias's name and spec on the module: give the module its own back
        for k, v in getattr(self, "saved", {}).items():
            setattr(module, k, v)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED or fullname == "mpsearch.cache":
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(fullname))
        return None


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
