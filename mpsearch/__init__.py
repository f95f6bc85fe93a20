"""mpsearch: mixed-precision bit allocation and cache scheduling for diffusion models.

    import mpsearch
    pipe = mpsearch.load_pipeline("default")
    profile = mpsearch.profile(pipe)
    plan = mpsearch.solve(profile, budget="60%")
    handle = mpsearch.apply_plan(pipe, plan)
    images = pipe(class_labels=[3, 7]).images
    handle.remove()
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use, so `import mpsearch` stays cheap)
_LAZY = {
    "load_pipeline": "pipeline",
    "DigitsPipeline": "pipeline",
    "profile": "profiler",
    "Profile": "profile_store",
    "solve": "solve",
    "Plan": "plan",
    "apply_plan": "executor",
    "PlanHandle": "executor",
    "describe": "models",
    "parse_budget": "budget",
    "MpsearchError": "errors",
}
_SUBMODULES = ("formats", "models", "plan", "executor", "metrics", "solver", "budget", "errors", "profiler",
               "profile_store", "pipeline", "classifier", "cli")

__all__ = sorted(_LAZY) + ["formats", "__version__"]


class _Package(types.ModuleType):
    """Importing the submodule ``mpsearch.solve`` sets the package attribute ``solve`` to that module, which
    would hide the public function ``mpsearch.solve``; the function is kept instead (the module stays in
    ``sys.modules``, so ``from mpsearch.solve import ...`` works as usual)."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _LAZY and name == _LAZY[name]:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mpsearch' has no attribute {name!r}")
