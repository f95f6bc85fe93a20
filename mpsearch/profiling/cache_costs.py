"""Costs of reuse, measured on the pipeline. Three targets:

* ``"image"`` (default): the error the schedule is judged by, the final image's. For every reuse run (compute
  at ``p``, reuse ``p``'s features at ``p+1 .. t-1``, compute from ``t`` on, every other step computed) the
  generation is replayed from the reference trajectory (steps up to ``p`` are not recomputed) and
  ``E(p, t)`` = mean squared difference of the final images from the run without cache. The matrix handed
  to the scheduler is the increment ``C[p, u] = E(p, u+1) - E(p, u)`` (``E(p, p+1) = 0``; ``E`` is made
  non-decreasing in ``t`` first), so that the scheduler's sum over a run, ``sum_{p<u<t} C[p, u]``, is exactly
  the run's measured error ``E(p, t)``: errors within a run compound (they point the same way), which a
  per-step cost cannot express. Runs are assumed to add up; the measuring run costs about ``S^3 / 6``
  denoiser calls (about 2000 for 20 steps; most are the cheap reuse-free tail).

  Why not the per-step output error (the former default): on the default DiT it mis-ranks schedules in two
  ways that both favour computing the first steps densely and reusing in long runs later. (1) The step
  weighting: the image error a single reuse causes, divided by the weighted output cost, ranges from 0.003
  (step 2) to 0.17 (step 16): the DDIM gain misses that the denoiser corrects early errors, so early reuses
  look ~50x too expensive. (2) Compounding: a run of L reuses costs more than the sum of its per-step costs,
  increasingly with L (measured/summed: 0.08 at L=1, 0.25 at L=4, 0.46 at L=8), so long runs look too cheap.
  Across-run interactions remain unmodelled (the sum of run errors underestimates a schedule's error by
  about 1.3x on the DiT and 1.7x on the UNet; the ranking is what matters to the DP).

* ``"output"`` (CEM-style): ``C[s, u] = ||eps_u(reuse s) - eps_u||^2 / ||eps_u||^2``, the relative
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

import contextlib
import dataclasses

import numpy as np
import torch

from mpsearch.cache_units import CacheUnit
from mpsearch.errors import ProfileError, UsageError
from mpsearch.models import get_denoiser
from mpsearch.prompts import builtin_prompts
from mpsearch.runtime.cache_hooks import FeatureCacheConfig, apply_feature_cache
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate, takes_prompts
from mpsearch.runtime.steps import first_tensor

#: a short measuring run: a few conditions, one seed (profiling seeds, never the held-out 1000+)
MEASURE_LABELS = (0, 3, 5, 8)
MEASURE_SEEDS = (0,)
TARGETS = ("image", "output", "feature")


def measuring_conditions(pipe, labels=MEASURE_LABELS) -> list:
    """What a measuring run generates: ``labels``, except that a text-to-image ``pipe`` given the default
    labels measures as many prompts of the built-in calibration set (never held-out ones)."""
    if tuple(labels) == MEASURE_LABELS and takes_prompts(pipe):
        return list(builtin_prompts(len(MEASURE_LABELS), "calibration").prompts)
    return list(labels)


def _apply_layers(pipe, plan):
    """The plan's layer formats without its cache section, as a context (nothing without a plan)."""
    if plan is None:
        return contextlib.nullcontext()
    return apply_plan(pipe, dataclasses.replace(plan, cache=None))  # keeps the variants' calibration


def measure_segment_errors(pipe, unit: CacheUnit, steps: int, *, plan=None, labels=MEASURE_LABELS,
                           seeds=MEASURE_SEEDS, guidance_scale=None, warmup: int = 2,
                           size: int | None = None) -> np.ndarray:
    """``E[p, t]``: mean squared final-image error (against the same model without cache) of computing at ``p``,
    reusing at ``p+1 .. t-1`` and computing everything else, for ``warmup - 1 <= p`` and ``p + 2 <= t < steps``
    (0 elsewhere). Steps up to ``p`` are replayed from a reference run, not recomputed."""
    labels = measuring_conditions(pipe, labels)
    denoiser = get_denoiser(pipe)
    E = np.zeros((steps, steps))
    with _apply_layers(pipe, plan):
        for seed in seeds:
            outs: dict[tuple[int, int], object] = {}
            snaps: dict[tuple[int, int], tuple[dict, dict]] = {}

            # defaults bind this seed's dicts: each closure runs only inside its own iteration (B023)
            def record(st, forward, args, kwargs, outs=outs, snaps=snaps):
                out = forward(*args, **kwargs)
                outs[(st.step, st.slot)] = out
                snaps[(st.step, st.slot)] = (dict(st.outputs), dict(st.residual))
                return out

            ref = _generate_with(pipe, denoiser, unit, (True,) * steps, record, labels, seed, steps, guidance_scale,
                                 size)
            if len({k[0] for k in outs}) != steps:
                raise ProfileError(f"the measuring run saw {len({k[0] for k in outs})} of {steps} steps; check "
                                   "that the pipeline calls the denoiser once per step (or once per CFG half)")
            for p in range(max(warmup - 1, 0), steps - 2):
                def replay(st, forward, args, kwargs, p=p, outs=outs, snaps=snaps):
                    key = (st.step, st.slot)
                    if st.step > p or key not in outs:
                        return forward(*args, **kwargs)
                    if st.step == p:  # the cache as the reference run left it after computing step p
                        o, r = snaps[key]
                        st.outputs.update(o)
                        st.residual.update(r)
                    return outs[key]

                for t in range(p + 2, steps):
                    compute = tuple(not p < u < t for u in range(steps))
                    img = _generate_with(pipe, denoiser, unit, compute, replay, labels, seed, steps,
                                         guidance_scale, size)
                    E[p, t] += float(np.mean((img.astype(np.float64) - ref) ** 2))
    return E / len(seeds)


def _generate_with(pipe, denoiser, unit, compute, intercept, labels, seed, steps, guidance_scale,
                   size=None) -> np.ndarray:
    with apply_feature_cache(denoiser, FeatureCacheConfig(unit, tuple(compute))) as cache:
        cache.state.intercept = intercept
        return generate(pipe, labels, seed, steps, guidance_scale, size).astype(np.float64)


def segment_increments(E: np.ndarray) -> np.ndarray:
    """The additive cost matrix of run errors ``E[p, t]`` (see the module docstring): ``C[p, u] =
    E'(p, u+1) - E'(p, u)`` with ``E'`` the running maximum of ``E`` over ``t`` (so ``C >= 0``) and
    ``E'(p, p+1) = 0``; the last step is always computed, so ``C[p, S-1] = 0``."""
    E = np.asarray(E, dtype=float)
    S = E.shape[0]
    C = np.zeros((S, S))
    for p in range(S):
        env = np.maximum.accumulate(np.concatenate([[0.0], np.maximum(E[p, p + 2:], 0.0)]))  # t = p+1 .. S-1
        C[p, p + 1:S - 1] = np.diff(env)
    return C


def measure_costs(pipe, unit: CacheUnit, steps: int, *, plan=None, labels=MEASURE_LABELS, seeds=MEASURE_SEEDS,
                  guidance_scale=None, target: str = "image", warmup: int = 2, size: int | None = None) -> np.ndarray:
    """(steps, steps) cost matrix of reusing ``unit``'s features, measured on ``pipe`` (with ``plan``'s formats).

    ``warmup`` (image target only): runs start after the first ``warmup`` steps (which every schedule
    computes); earlier entries are left at 0."""
    if target not in TARGETS:
        raise UsageError(f"cost target must be one of {', '.join(TARGETS)}, got {target!r}")
    labels = measuring_conditions(pipe, labels)
    if target == "image":
        return segment_increments(measure_segment_errors(pipe, unit, steps, plan=plan, labels=labels, seeds=seeds,
                                                         guidance_scale=guidance_scale, warmup=warmup, size=size))
    if target == "output":
        return _measure_output_costs(pipe, unit, steps, plan, labels, seeds, guidance_scale, size)

    denoiser = get_denoiser(pipe)
    num = np.zeros((steps, steps))
    den = np.zeros(steps)
    with _apply_layers(pipe, plan):
        for seed in seeds:
            feats: dict[int, dict[int, torch.Tensor]] = {}

            def record(step, slot, feature, feats=feats):  # bound: runs only in this seed's generation
                if 0 <= step < steps:
                    feats.setdefault(slot, {})[step] = feature.detach().double().flatten(1).cpu()

            with apply_feature_cache(denoiser, FeatureCacheConfig(unit, (True,) * steps)) as cache:
                cache.state.record = record
                generate(pipe, labels, seed, steps, guidance_scale, size)
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
    cost = num / np.maximum(den, 1e-30)[None, :]
    return np.triu(cost, 1)


def _measure_output_costs(pipe, unit, steps, plan, labels, seeds, guidance_scale, size=None) -> np.ndarray:

    denoiser = get_denoiser(pipe)
    num = np.zeros((steps, steps))
    den = np.zeros(steps)
    with _apply_layers(pipe, plan):
        for seed in seeds:
            cache = apply_feature_cache(denoiser, FeatureCacheConfig(unit, (True,) * steps))
            st = cache.state
            snapshots: dict[tuple[int, int], tuple[dict, dict]] = {}  # (step, slot) -> cached features

            # defaults bind this seed's cache state: the hook is removed before the next seed (B023)
            def after(module, args, kwargs, output, st=st, snapshots=snapshots, cache=cache):
                if st.probe or not 0 <= st.step < steps:
                    return None
                step, slot = st.step, st.slot
                ref = first_tensor(output).detach().double()
                den[step] += float((ref * ref).sum())
                snapshots[(step, slot)] = (dict(st.outputs), dict(st.residual))
                saved = (st.outputs, st.residual, st.inputs, st.reuse)
                st.probe = True
                try:
                    with cache.steps.hold():  # the re-evaluations below are this step again, not new calls
                        for s in range(step):
                            if (s, slot) not in snapshots:
                                continue
                            st.outputs, st.residual = (dict(x) for x in snapshots[(s, slot)])
                            st.reuse = True
                            with torch.no_grad():
                                probe = first_tensor(module(*args, **kwargs)).detach().double()
                            num[s, step] += float(((probe - ref) ** 2).sum())
                finally:
                    st.outputs, st.residual, st.inputs, st.reuse = saved
                    st.probe = False
                return None

            h = denoiser.register_forward_hook(after, with_kwargs=True)
            try:
                generate(pipe, labels, seed, steps, guidance_scale, size)
            finally:
                h.remove()
                cache.remove()
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
