"""Costs of reuse, measured along a run that computes every step. Two targets:

* ``"output"`` (default; CEM-style): ``C[s, u] = ||eps_u(reuse s) - eps_u||^2 / ||eps_u||^2``, the relative
  error of the denoiser's output at step ``u`` when the unit's features come from step ``s``; each step is
  re-evaluated once per earlier step (only the uncached part runs), so the run costs about S/2 extra
  shallow passes per step.
* ``"feature"``: ``C[s, u] = ||F_u - F_s||^2 / ||F_u||^2``, the relative change of the reused feature itself
  (no extra passes; a cruder proxy, since a change deep in the network need not reach the output).

Sums run over the batch and the measuring conditions.

The measuring run installs the cache hooks with every step computed (so it runs exactly what the plan will
run) and records the feature at each step. With a plan, its layer formats are applied first, so the costs
include the quantization error that reused features carry (the plan's own cache section is ignored).
Without a pipeline, :func:`costs_from_profile` bounds the costs from the profile's consecutive block changes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ProfileError, UsageError
from ..generation import generate
from ..models import get_denoiser
from .hooks import FeatureCacheConfig, apply_feature_cache
from .units import CacheUnit

#: a short measuring run: a few conditions, one seed (profiling seeds, never the held-out 1000+)
MEASURE_LABELS = (0, 3, 5, 8)
MEASURE_SEEDS = (0,)


def measure_costs(pipe, unit: CacheUnit, steps: int, *, plan=None, labels=MEASURE_LABELS, seeds=MEASURE_SEEDS,
                  guidance_scale=None, target: str = "output") -> np.ndarray:
    """(steps, steps) cost matrix of reusing ``unit``'s features, measured on ``pipe`` (with ``plan``'s formats)."""
    if target not in ("output", "feature"):
        raise UsageError(f"cost target must be output or feature, got {target!r}")
    if target == "output":
        return _measure_output_costs(pipe, unit, steps, plan, labels, seeds, guidance_scale)
    from ..executor import apply_plan
    from ..plan import Plan

    denoiser = get_denoiser(pipe)
    handle = None
    if plan is not None:
        layers_only = Plan.from_dict({**plan.to_dict(), "cache": None})
        handle = apply_plan(pipe, layers_only)
    num = np.zeros((steps, steps))
    den = np.zeros(steps)
    try:
        for seed in seeds:
            feats: dict[int, dict[int, torch.Tensor]] = {}

            def record(step, slot, feature):
                if 0 <= step < steps:
                    feats.setdefault(slot, {})[step] = feature.detach().double().flatten(1).cpu()

            cache = apply_feature_cache(denoiser, FeatureCacheConfig(unit, (True,) * steps))
            cache.state.record = record
            try:
                generate(pipe, labels, seed, steps, guidance_scale)
            finally:
                cache.remove()
            for per_step in feats.values():
                if len(per_step) != steps:
                    raise ProfileError(f"the measuring run saw {len(per_step)} of {steps} steps of {unit.name}; "
                                       "check that the pipeline runs the unit once per step")
                F = torch.stack([per_step[t] for t in range(steps)])  # (S, B, D)
                sq = (F * F).sum(-1).sum(-1)  # (S,)
                for s in range(steps):
                    d = ((F[s + 1:] - F[s]) ** 2).sum(-1).sum(-1)
                    num[s, s + 1:] += d.numpy()
                den += sq.numpy()
    finally:
        if handle is not None:
            handle.remove()
    cost = num / np.maximum(den, 1e-30)[None, :]
    return np.triu(cost, 1)


def _first(out):
    return out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)


def _measure_output_costs(pipe, unit, steps, plan, labels, seeds, guidance_scale) -> np.ndarray:
    from ..executor import apply_plan
    from ..plan import Plan

    denoiser = get_denoiser(pipe)
    handle = None
    if plan is not None:
        handle = apply_plan(pipe, Plan.from_dict({**plan.to_dict(), "cache": None}))
    num = np.zeros((steps, steps))
    den = np.zeros(steps)
    try:
        for seed in seeds:
            cache = apply_feature_cache(denoiser, FeatureCacheConfig(unit, (True,) * steps))
            st = cache.state
            snapshots: dict[tuple[int, int], tuple[dict, dict]] = {}  # (step, slot) -> cached features

            def after(module, args, kwargs, output):
                if st.probe or not 0 <= st.step < steps:
                    return None
                step, slot = st.step, st.slot
                ref = _first(output).detach().double()
                den[step] += float((ref * ref).sum())
                snapshots[(step, slot)] = (dict(st.outputs), dict(st.residual))
                saved = (st.outputs, st.residual, st.inputs, st.reuse)
                st.probe = True
                try:
                    for s in range(step):
                        if (s, slot) not in snapshots:
                            continue
                        st.outputs, st.residual = (dict(x) for x in snapshots[(s, slot)])
                        st.reuse = True
                        with torch.no_grad():
                            probe = _first(module(*args, **kwargs)).detach().double()
                        num[s, step] += float(((probe - ref) ** 2).sum())
                finally:
                    st.outputs, st.residual, st.inputs, st.reuse = saved
                    st.probe = False
                return None

            h = denoiser.register_forward_hook(after, with_kwargs=True)
            try:
                generate(pipe, labels, seed, steps, guidance_scale)
            finally:
                h.remove()
                cache.remove()
    finally:
        if handle is not None:
            handle.remove()
    gain = step_gains(getattr(pipe, "scheduler", None), steps)
    return np.triu(num * (gain ** 2)[None, :] / max(den.mean(), 1e-30), 1)


def step_gains(scheduler, steps: int) -> np.ndarray:
    """How much an error in the denoiser's output at each step moves the final sample, for DDIM-like
    schedulers (``alphas_cumprod`` and ``timesteps``): ``|d x_prev / d eps| * sqrt(abar_end / abar_prev)``
    (the sample's own path scales by ``sqrt(abar_prev / abar_t)`` per step and telescopes). Ones otherwise."""
    ac = getattr(scheduler, "alphas_cumprod", None)
    ts = getattr(scheduler, "timesteps", None)
    if ac is None or ts is None or len(ts) != steps:
        return np.ones(steps)
    ac = np.asarray(ac, dtype=float)
    ts = [int(t) for t in ts]
    end = float(getattr(scheduler, "final_alpha_cumprod", ac[0]))
    g = np.ones(steps)
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_p = ac[ts[i + 1]] if i + 1 < steps else end
        d = np.sqrt(1 - a_p) - np.sqrt(a_p / a_t) * np.sqrt(1 - a_t)
        g[i] = abs(d) * np.sqrt(end / a_p)
    return g


def costs_from_profile(profile, unit: CacheUnit) -> np.ndarray:
    """An upper bound of the cost matrix from the profile's consecutive changes of the unit's last block:
    ``C[s, u] <= (sum_{s<v<=u} sqrt(change_v))^2`` (triangle inequality on relative changes)."""
    blocks = list(profile.blocks)
    if unit.feature not in blocks:
        raise ProfileError(f"the profile has no block-change measurements for {unit.feature}; "
                           "measure the costs on the pipeline instead")
    change = profile.block_change()[blocks.index(unit.feature)]
    r = np.sqrt(np.nan_to_num(change, nan=0.0))
    S = len(r)
    cum = np.concatenate([[0.0], np.cumsum(r[1:])])  # cum[t] = sum_{1<=v<=t} r_v
    cost = np.zeros((S, S))
    for s in range(S):
        for u in range(s + 1, S):
            cost[s, u] = (cum[u] - cum[s]) ** 2
    return cost
