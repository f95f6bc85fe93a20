"""Profiling: what measures. It runs the runtime's own modules, so it measures what the executor will run.

* :mod:`~mpsearch.profiling.profiler`: the local tier (every layer x format x step from one full-precision run).
* :mod:`~mpsearch.profiling.store`: the Profile, one SQLite file (resumable, sharded, merged).
* :mod:`~mpsearch.profiling.sensitivity`: output sensitivity (the ``gn`` metric's Gauss-Newton weights).
* :mod:`~mpsearch.profiling.latency`: per-layer latency tables on the machine at hand.
* :mod:`~mpsearch.profiling.layer_calls`: MACs and activation-error ratios per layer for compute budgets.
* :mod:`~mpsearch.profiling.cache_costs`: the cost of reusing cached features, measured.
* :mod:`~mpsearch.profiling.endtoend`: the end-to-end tier's measurements (units, image scores, results).

Nothing here imports :mod:`mpsearch.allocation`.
"""
