"""The anchors' allocation methods, rebuilt on mpsearch's measurements so they can be compared at equal bytes.

Each returns either a solver :class:`~mpsearch.allocation.solvers.Problem` (solved by the same exact ILP as mpsearch) or
plans; what differs is what each method measures and how it counts bytes:

- **AutoQuantize** (NVIDIA ModelOpt, ``auto_quantize(method="gradient")``): see
  :mod:`mpsearch.allocation.autoquantize`: ModelOpt's gradient score ``sum (dL/dY)^2 (Y_q - Y)^2`` on the
  denoising loss, effective-bits costs (NVFP4 and INT4 at 4.0 bits), its PuLP/CBC 0/1 program. Re-exported here.
- **HAWQ-style** (HAWQ-V2/V3): ``Tr(H_i) / n_i * ||Q(W_i) - W_i||^2`` with the trace of each layer's block of
  the Gauss-Newton Hessian of the output-matching loss ``0.5 ||f(x; W) - f(x; W_fp)||^2`` at inputs from real
  sampling trajectories, estimated by Hutchinson's method on the output side:
  ``Tr(J_i^T J_i) = E_u ||J_i^T u||^2`` for Rademacher ``u`` (one backward pass per sample, exact in
  expectation). Real bytes. :func:`hawq_traces` takes the profile's seeds and every step, one sample per call:
  the same number of backward passes as mpsearch's ``gn`` (2 seeds x 20 steps = 40 by default).
- **MixDQ-style** (Zhao et al. 2024, metric-decoupled sensitivity): :func:`mixdq_sensitivity` measures every
  layer x format by quantizing that layer alone and generating (MixDQ's own measurement, not mpsearch's local
  tier): content damage = 1 - SSIM against the full-precision images, quality damage = the relative MSE of the
  images (the PSNR's error; lower PSNR, higher damage). Each layer joins the group whose normalized damage it
  raises most (content or quality); :func:`mixdq_measured_plans` solves one ILP per group on that group's own
  metric, the bytes above the groups' smallest sizes split by a sweep chosen with generations on search seeds
  (:func:`choose_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from mpsearch.allocation.autoquantize import (  # noqa: F401
    aq_score,
    autoquantize_scores,
    autoquantize_search,
    autoquantize_select,
    denoising_batches,
    gradient_scores,
)
from mpsearch.allocation.objective import build_problem
from mpsearch.allocation.solvers import DEFAULT_SOLVER, Problem, get_solver, min_feasible_bytes
from mpsearch.errors import UsageError
from mpsearch.formats import get_format
from mpsearch.formats.variant import split_candidate, variant_layers
from mpsearch.metrics import normalize, ssim
from mpsearch.models import ModelInfo, describe, get_denoiser
from mpsearch.plan import Plan
from mpsearch.profiling.sensitivity import CallRecorder, hutchinson
from mpsearch.profiling.store import Profile
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate, generate_many
from mpsearch.runtime.steps import first_tensor

__all__ = ["NOMINAL_BITS", "nominal_bytes", "output_jacobian_traces", "hawq_traces",
           "hawq_problem", "CONTENT_ROLES", "choose_split", "mixdq_sensitivity", "mixdq_groups",
           "mixdq_measured_plans", "autoquantize_scores", "autoquantize_search", "autoquantize_select",
           "gradient_scores"]

#: bits per weight element as ModelOpt's AutoQuantize counts them: the format's element bits (``Format.bits``),
#: scales and zeros left out (so NVFP4 and INT4 count 4.0, INT8 8.0); fp keeps the dtype's bits
NOMINAL_BITS = {f: float(get_format(f).bits) for f in ("int8", "nvfp4", "int4", "int4-g64", "int4-g32")}

#: roles MixDQ-style grouping treats as "content" (the rest is "quality")
CONTENT_ROLES = frozenset({"self_attn", "cross_attn", "time_embed", "modulation"})


def round_to_nearest_only(formats: Sequence[str], who: str) -> None:
    """UsageError if ``formats`` name a calibrated variant: the rivals run round-to-nearest, as their authors do."""
    named = [f for f in formats if split_candidate(f)[1] is not None]
    if named:
        raise UsageError(f"{who} runs round-to-nearest formats, as its authors do; got {named[0]!r}: pass "
                         "profile.select_formats(('int8', 'nvfp4', 'int4')) or a profile made with variants='none'")


def nominal_bytes(info: ModelInfo, formats: Sequence[str]) -> np.ndarray:
    """(L, F) bytes at nominal bits per element (AutoQuantize's accounting): fp at the dtype's size."""
    round_to_nearest_only(formats, "AutoQuantize-style costing")
    out = np.zeros((len(info.layers), len(formats)), dtype=np.int64)
    for li, layer in enumerate(info.layers):
        for fi, f in enumerate(formats):
            if f not in layer.eligible:
                continue
            if f == "fp":
                out[li, fi] = layer.nbytes("fp")
            elif f in NOMINAL_BITS:
                out[li, fi] = int(np.ceil(layer.numel * NOMINAL_BITS[f] / 8))
            else:
                raise UsageError(f"AutoQuantize-style costing has no nominal bits for format {f!r}; add it to "
                                 "mpsearch.allocation.baselines.NOMINAL_BITS")
    return out


def output_jacobian_traces(model: torch.nn.Module, calls: Sequence[tuple], params: dict[str, torch.Tensor], *,
                           samples: int = 4, seed: int = 0) -> dict[str, float]:
    """Per parameter: Hutchinson estimate of ``Tr(J^T J)`` (the Gauss-Newton Hessian block of the loss
    ``0.5 ||f - f_fp||^2``), averaged over ``calls`` (a list of ``(args, kwargs)`` for ``model``).

    For each call and each of ``samples`` Rademacher vectors ``u`` over the output, one backward pass gives
    ``J^T u`` for every parameter at once and ``||J_i^T u||^2`` is an unbiased estimate of ``Tr(J_i^T J_i)``.
    The model is left as it was (``requires_grad`` flags restored, no gradients kept).
    """
    if samples < 1:
        raise UsageError(f"samples must be at least 1, got {samples}")
    if not calls:
        raise UsageError("no recorded calls: record at least one denoiser call (run a generation first)")
    names = list(params)
    tensors = [params[n] for n in names]
    flags = [t.requires_grad for t in tensors]
    gen = torch.Generator().manual_seed(int(seed))
    sums = np.zeros(len(names))
    try:
        for t in tensors:
            t.requires_grad_(True)
        with torch.enable_grad():
            for args, kwargs in calls:
                out = model(*args, **kwargs)
                y = first_tensor(out)
                if y is None:
                    raise UsageError(f"the denoiser returned {type(out).__name__}, not a tensor; HAWQ traces need "
                                     "its output")
                sums += hutchinson(y, tensors, samples=samples, generator=gen)
    finally:
        for t, f in zip(tensors, flags, strict=True):
            t.requires_grad_(f)
    return {n: s / (len(calls) * samples) for n, s in zip(names, sums, strict=True)}


def record_denoiser_calls(pipe: Any, labels: Sequence, seed: int, steps: int, *, every: int = 1,
                          guidance_scale: float | None = None) -> list:
    """The ``(args, kwargs)`` of the denoiser's calls in one generation (every ``every``-th step), cloned."""

    with CallRecorder(every).install(get_denoiser(pipe)) as recorder:
        generate(pipe, labels, seed, steps, guidance_scale)
    return [(args, kwargs) for _, args, kwargs in recorder.calls]


def hawq_traces(pipe: Any, info: ModelInfo | None = None, *, labels: Sequence = tuple(range(10)), seed: int = 0,
                steps: int = 20, every: int = 1, samples: int = 1, seeds: Sequence[int] | None = None) -> np.ndarray:
    """(L,) Hessian trace of every candidate layer's weight (see :func:`output_jacobian_traces`), from the
    denoiser's calls at every ``every``-th of ``steps`` steps of one generation of ``labels`` per seed
    (``seeds``, default ``(seed,)``). The defaults match mpsearch's profile: every step, one sample per call."""

    den = get_denoiser(pipe)
    info = info or describe(den)
    modules = dict(den.named_modules())
    calls = [c for s in (seeds if seeds is not None else (seed,))
             for c in record_denoiser_calls(pipe, labels, s, steps, every=every)]
    params = {layer.name: modules[layer.name].weight for layer in info.layers}
    traces = output_jacobian_traces(den, calls, params, samples=samples, seed=seed)
    return np.array([traces[layer.name] for layer in info.layers])


def hawq_problem(profile: Profile, pipe: Any, traces: np.ndarray, budget_bytes: int | None) -> Problem:
    """HAWQ-style problem: ``Tr(H_i) / n_i * ||Q_f(W_i) - W_i||^2`` per layer and format, real bytes."""
    round_to_nearest_only(profile.formats, "HAWQ-style allocation")

    base = build_problem(profile, budget_bytes, role_pins={})
    modules = dict(get_denoiser(pipe).named_modules())
    cost = np.array(base.cost, dtype=float)
    for li, layer in enumerate(profile.info.layers):
        w = modules[layer.name].weight.detach()
        for fi, f in enumerate(profile.formats):
            if f == "fp" or not np.isfinite(cost[li, fi]):
                continue
            delta = float((get_format(f).fake_quantize(w).double() - w.double()).square().sum())
            cost[li, fi] = traces[li] / layer.numel * delta
    return replace(base, cost=normalize(cost))


def choose_split(pipe: Any, plans: dict, *, labels: Sequence = tuple(range(10)), seeds: Sequence[int] = (500,),
                 steps: int = 8) -> tuple[float, dict]:
    """The split whose plan scores best on search seeds: ``content`` (1 - SSIM) plus ``quality`` (relative
    MSE), each divided by its smallest value over the splits. Returns ``(split, {split: scores})``."""

    if not plans:
        raise UsageError("no MixDQ-style split fits the budget; try a larger budget or other splits")
    reference = generate_many(pipe, labels, seeds, steps)
    power = float(np.mean(np.square(reference))) or 1.0
    scores = {}
    for a, plan in plans.items():
        with apply_plan(pipe, plan, stash="memory", ignore_weights=True):
            images = generate_many(pipe, labels, seeds, steps)
        scores[a] = {"content": max(0.0, 1.0 - float(ssim(reference, images))),
                     "quality": float(np.mean(np.square(images - reference))) / power}
    lo = {m: max(min(s[m] for s in scores.values()), 1e-12) for m in ("content", "quality")}
    best = min(scores, key=lambda a: scores[a]["content"] / lo["content"] + scores[a]["quality"] / lo["quality"])
    return best, scores


def mixdq_sensitivity(pipe: Any, info: ModelInfo | None = None,
                      formats: Sequence[str] = ("fp", "int8", "nvfp4", "int4"), *,
                      labels: Sequence = tuple(range(10)), seeds: Sequence[int] = (0,), steps: int = 20,
                      guidance_scale: float | None = None, progress: Any = None) -> dict:
    """MixDQ's own measurement: every layer x format quantized alone, generated, scored against full precision.
    Returns ``{"content": (L, F) 1 - SSIM, "quality": (L, F) relative image MSE, "generations": int}``
    (fp: 0; ineligible: inf)."""
    round_to_nearest_only(formats, "MixDQ-style measurement")
    den = get_denoiser(pipe)
    info = info or describe(den)
    reference = generate_many(pipe, labels, seeds, steps, guidance_scale)
    power = float(np.mean(np.square(reference))) or 1.0
    L, Fn = len(info.layers), len(formats)
    content, quality = np.zeros((L, Fn)), np.zeros((L, Fn))
    generations = 0
    for li, layer in enumerate(info.layers):
        for fi, f in enumerate(formats):
            if f not in layer.eligible:
                content[li, fi] = quality[li, fi] = np.inf
                continue
            if f == "fp":
                continue
            plan = Plan.from_assignment(info, {layer.name: f})
            with apply_plan(pipe, plan, stash="memory", ignore_weights=True):
                images = generate_many(pipe, labels, seeds, steps, guidance_scale)
            generations += len(seeds)
            content[li, fi] = max(0.0, 1.0 - float(ssim(reference, images)))
            quality[li, fi] = float(np.mean(np.square(images - reference))) / power
        if progress:
            progress(li + 1, L)
    return {"content": content, "quality": quality, "generations": generations}


def mixdq_groups(content: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """(L,) True where a layer belongs to the content group: its largest content damage, normalized by the
    largest content damage of any layer, exceeds its largest quality damage normalized the same way."""
    c, q = normalize(content), normalize(quality)
    fin = lambda a: np.where(np.isfinite(a), a, 0.0).max(axis=1)  # noqa: E731
    return fin(c) > fin(q)


def mixdq_measured_plans(profile: Profile, content: np.ndarray, quality: np.ndarray, budget_bytes: int,
                         splits: Sequence[float], *, solver: str = DEFAULT_SOLVER,
                         role_pins: dict | None = None) -> dict:
    """MixDQ-style plans from :func:`mixdq_sensitivity`: content layers solved on content damage, quality
    layers on quality damage, two ILPs, the content group given its smallest size plus the share ``a`` of the
    bytes left above both groups' smallest sizes, the quality group the rest. Returns ``{a: Plan}``; empty when
    the budget is below the smallest size. ``role_pins`` as in :func:`mpsearch.solve` (default here: none,
    like the compared methods)."""
    round_to_nearest_only(profile.formats, "MixDQ-style allocation")

    base = build_problem(profile, None, role_pins={} if role_pins is None else role_pins)
    is_content = mixdq_groups(content, quality)
    groups = [np.flatnonzero(is_content), np.flatnonzero(~is_content)]
    subs = []
    for idx, metric in zip(groups, (normalize(content), normalize(quality)), strict=True):
        pos = {int(li): k for k, li in enumerate(idx)}
        cost = np.where(np.isfinite(base.cost[idx]), metric[idx], np.inf)
        subs.append((idx, replace(base, layer_names=tuple(base.layer_names[i] for i in idx), cost=cost,
                                  nbytes=base.nbytes[idx], fixed_bytes=0, groups=(),
                                  pins={pos[i]: f for i, f in base.pins.items() if i in pos})))
    lows = [min_feasible_bytes(sub) if len(idx) else 0 for idx, sub in subs]
    spare = budget_bytes - base.fixed_bytes - sum(lows)
    plans: dict[float, Plan] = {}
    for a in splits:
        if not 0.0 <= a <= 1.0:
            raise UsageError(f"a MixDQ-style split is the content group's share, from 0 to 1; got {a}")
    if spare < 0:
        return plans
    for a in splits:
        choice = np.zeros(len(base.layer_names), dtype=int)
        for (idx, sub), low, share in zip(subs, lows, (a, 1.0 - a), strict=True):
            if len(idx):
                choice[idx] = get_solver(solver).solve(sub.with_budget(low + int(spare * share))).choice
        assignment = {n: base.formats[c] for n, c in zip(base.layer_names, choice, strict=True)}
        plans[a] = Plan.from_assignment(profile.info, assignment, weights=profile.weights,
                                        provenance={"solver": f"mixdq-measured-split-{a}"},
                                        calibration=profile.calibration(variant_layers(assignment)))
    return plans
