"""mpsearch: mixed-precision bit allocation and cache scheduling for diffusion models.

    import mpsearch
    pipe = mpsearch.load_pipeline("default")
    profile = mpsearch.profile(pipe)
    plan = mpsearch.solve(profile, budget="60%")
    with mpsearch.apply_plan(pipe, plan):
        images = pipe(class_labels=[3, 7]).images

The package follows the flow: a core every stage may use (``formats``, ``models``, ``plan``, ``budget``,
``metrics``, ``errors``, ``io``, ``cache_units``), then ``runtime`` (runs a plan), ``profiling`` (measures),
``allocation`` (decides), then the applications under ``apps`` (``cli``, ``report``, ``profile``, ``pipeline``,
``evaluate``, ``demo``, ``testing``).
"""

from __future__ import annotations

import importlib

from mpsearch.version import __version__

# public name -> module (below mpsearch.) that defines it (imported on first use, so `import mpsearch` stays cheap)
_LAZY = {
    "load_pipeline": "apps.pipeline",
    "DigitsPipeline": "apps.pipeline",
    "profile": "apps.profile",
    "Profile": "profiling.store",
    "solve": "allocation.solving",
    "SolveConfig": "allocation.config",
    "Plan": "plan",
    "apply_plan": "runtime.executor",
    "PlanHandle": "runtime.executor",
    "export": "runtime.checkpoint",
    "to_torchao": "runtime.torchao_interop",
    "compiled_cpu_kernels": "runtime.kernels.cpu.compiled",
    "describe": "models",
    "parse_budget": "budget",
    "MpsearchError": "errors",
}
_SUBMODULES = ("formats", "models", "plan", "budget", "metrics", "errors", "io", "cache_units", "runtime",
               "profiling", "allocation", "apps", "classifier", "archs", "prompts")

__all__ = sorted(_LAZY) + ["formats", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"mpsearch.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"mpsearch.{name}")
    raise AttributeError(f"module 'mpsearch' has no attribute {name!r}")
