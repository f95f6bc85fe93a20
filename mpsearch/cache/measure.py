"""Costs of reuse, measured: ``C[s, u]`` = relative squared change of the unit's reused feature between
steps ``s`` and ``u`` along a full computation, ``||F_u - F_s||^2 / ||F_u||^2`` summed over the batch.

The measuring run installs the cache hooks with every step computed (so it runs exactly what the plan will
run) and records the feature at each step. With a plan, its layer formats are applied first, so the costs
include the quantization error that reused features carry (the plan's own cache section is ignored).
Without a pipeline, :func:`costs_from_profile` bounds the costs from the profile's consecutive block changes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ProfileError
from ..generation import generate
from ..models import get_denoiser
from .hooks import FeatureCacheConfig, apply_feature_cache
from .units import CacheUnit

#: a short measuring run: a few conditions, one seed (profiling seeds, never the held-out 1000+)
MEASURE_LABELS = (0, 3, 5, 8)
MEASURE_SEEDS = (0,)


def measure_costs(pipe, unit: CacheUnit, steps: int, *, plan=None, labels=MEASURE_LABELS, seeds=MEASURE_SEEDS,
                  guidance_scale=None) -> np.ndarray:
    """(steps, steps) cost matrix of reusing ``unit``'s features, measured on ``pipe`` (with ``plan``'s formats)."""
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
