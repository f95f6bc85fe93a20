"""Runtime: what runs a plan.

* :mod:`~mpsearch.runtime.qmodules`: the quantized modules (one class per layer type, in a registry).
* :mod:`~mpsearch.runtime.executor`: ``apply_plan`` and its removable ``PlanHandle``.
* :mod:`~mpsearch.runtime.cache_hooks`: feature caching through diffusers' hook registry.
* :mod:`~mpsearch.runtime.steps`: the one step-state hook per denoiser that all of them read.
* :mod:`~mpsearch.runtime.generation`: the one place that knows how to call a pipeline with fixed seeds.

The runtime imports only the core (formats, models, plan, budget, metrics, errors, io).
"""
