"""AutoQuantize as NVIDIA ModelOpt runs it (``mtq.auto_quantize(method="gradient")``), on a diffusion denoiser.

Followed: ModelOpt ``modelopt/torch/quantization/algorithms.py`` (``AutoQuantizeGradientSearcher``,
``_get_auto_quantize_score``, ``run_search_with_stats``) and ``modelopt/torch/utils`` ``LPS`` (a PuLP wrapper).

- **Score** per (layer, format): ``sum over calibration batches of sum((dL/dY)^2 * (Y_q - Y)^2)`` (ModelOpt
  clamps the product to +-1e10 before squaring; so do we), ``Y`` the layer's full-precision output,
  ``Y_q`` its output with the format's weights on the same input (computed under no_grad in the forward, as
  ModelOpt's patched forward does), ``dL/dY`` from a backward hook of the model's loss.
- **Loss**: ModelOpt scores with the model's own training loss on calibration data (causal-LM cross-entropy
  for LLMs, cross-entropy for classifiers). A diffusion denoiser's training loss is the noise-prediction MSE
  ``mean((eps_theta(x_t, t, c) - eps)^2)``. The calibration batches are exactly mpsearch's profile calls
  (the same labels, seeds and steps of a full-precision sampling run, ``x_t`` as the sampler saw it), and
  ``eps`` is the noise that makes ``x_t`` from the run's own final image ``x_0`` (``eps = (x_t - sqrt(a_t)
  x_0) / sqrt(1 - a_t)``): the denoising loss with the model's generated images as data (data-free
  calibration, as Q-Diffusion / PTQ4DM calibrate on generated samples). The output-matching loss against
  full precision cannot be used: its gradient is zero at the full-precision model.
- **Cost**: effective bits, as ModelOpt counts them (``NOMINAL_BITS``: NVFP4 and INT4 at 4.0 bits per
  element, INT8 at 8.0, scales and zeros left out; unquantized at the dtype's bits). So its real bytes can
  exceed a real byte budget.
- **Search**: ModelOpt's gradient searcher is a 0/1 program solved by PuLP's CBC: one-hot per layer,
  minimize the sum of raw scores, ``sum cost <= max_weight_size``; if not Optimal it retries with a lower
  bound of 0.99 and 0.90 x the cap. :func:`autoquantize_search` is that program (the scores divided by their
  largest first: same optimum, but CBC's absolute tolerances no longer read a denoiser's 1e-9-sized scores as 0).
- **Recipes** (``recipes=True``): ModelOpt's calibrated configs for the formats that have one, each candidate
  calibrated before it is scored, as ``auto_quantize`` does with ``quantization_formats=[NVFP4_AWQ_LITE_CFG,
  INT4_AWQ_CFG, INT8_DEFAULT_CFG]`` (:data:`MODELOPT_RECIPES`): NVFP4 and INT4 with AWQ-lite (``nvfp4:awq``,
  ``int4:awq``, on the profile's calibration statistics) on Linear layers only (ModelOpt's ``awq_lite``
  patches quantized linear layers; convolutions keep max calibration, i.e. round to nearest), INT8 with max
  calibration. Its real bytes count AWQ's stored factor; its effective bits, as ModelOpt's, do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mpsearch.errors import ModelError, UsageError
from mpsearch.formats import get_format
from mpsearch.models import ModelInfo, describe, get_denoiser
from mpsearch.profiling.sensitivity import CallRecorder
from mpsearch.runtime.generation import generate
from mpsearch.runtime.qmodules import quantized_module
from mpsearch.runtime.steps import first_tensor

__all__ = ["MODELOPT_RECIPES", "aq_score", "gradient_scores", "denoising_batches", "autoquantize_scores",
           "autoquantize_search", "autoquantize_select", "recipe_candidates"]

#: ModelOpt's calibrated quantization config per format, as the variant that implements it (formats left out
#: keep max calibration: INT8_DEFAULT_CFG is round to nearest on amax scales)
MODELOPT_RECIPES = {"nvfp4": "nvfp4:awq", "int4": "int4:awq"}


def aq_score(grad_output: torch.Tensor, output_diff: torch.Tensor) -> float:
    """ModelOpt's ``_get_auto_quantize_score``: ``sum(clamp(g * dY, +-1e10)^2)``."""
    x = grad_output.float() * output_diff.float()
    return float(x.clamp(-1e10, 1e10).square().sum(dtype=torch.float64))


def gradient_scores(model: torch.nn.Module, batches: Sequence[tuple], modules: Sequence[torch.nn.Module],
                    formats: Sequence[str], eligible: Sequence[Any] | None = None, *,
                    loss_fn: Callable | None = None, packed: Callable | None = None) -> np.ndarray:
    """(L, F) AutoQuantize scores of ``modules`` (in order) under ``formats`` over ``batches`` (a list of
    ``(args, kwargs, target)``; ``loss_fn(output, target)``, default the MSE of the output's first
    ``target.shape[1]`` channels). ``eligible[l]`` is the set of formats layer ``l`` may take (others: inf);
    the ``"fp"`` format scores 0. ``packed(l, f, weight)`` makes layer ``l``'s candidate for format slot ``f``
    (default ``get_format(f).quantize(weight)``; the recipes' calibrated candidates). The model is left as it
    was (``requires_grad`` restored, no grads kept)."""
    loss_fn = loss_fn or (lambda out, target: F.mse_loss(out[:, : target.shape[1]].float(), target.float()))
    L, Fn = len(modules), len(formats)
    scores = np.zeros((L, Fn))
    for li in range(L):
        for fi, f in enumerate(formats):
            if eligible is not None and f not in eligible[li]:
                scores[li, fi] = np.inf
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]

    def hook(li):
        def fwd(module, inputs, output):
            if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
                return
            diffs = []
            with torch.no_grad():
                w = module.weight.detach()
                for fi, f in enumerate(formats):
                    if f == "fp" or not np.isfinite(scores[li, fi]):
                        continue
                    q = quantized_module(module, packed(li, f, w) if packed else get_format(f).quantize(w))
                    diffs.append((fi, (q(inputs[0]) - output).detach()))
                    del q
            if output.requires_grad:
                def back(g):
                    for fi, d in diffs:
                        scores[li, fi] += aq_score(g, d)
                output.register_hook(back)
        return fwd

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        for p in params:  # ModelOpt's default is_param_grad_enabled: every parameter
            p.requires_grad_(True)
        with torch.enable_grad():
            for args, kwargs, target in batches:
                y = first_tensor(model(*args, **kwargs))
                if y is None:
                    raise UsageError("the denoiser returned no tensor; AutoQuantize scores need its output")
                loss_fn(y, target).backward()
                for p in params:
                    p.grad = None
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None
    return scores


def denoising_batches(pipe: Any, labels: Sequence, seeds: Sequence[int], steps: int,
                      guidance_scale: float | None = None) -> list:
    """Every denoiser call of a full-precision generation per seed, with its noise-prediction target
    ``(x_t - sqrt(a_t) x_0) / sqrt(1 - a_t)``, ``x_0`` the run's own final image in model space."""
    den = get_denoiser(pipe)
    alphas = pipe.scheduler.alphas_cumprod
    out = []
    for seed in seeds:
        with CallRecorder(1).install(den) as rec:
            images = generate(pipe, labels, seed, steps, guidance_scale)
        x0 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() * 2 - 1
        for _, call_args, kwargs in rec.calls:
            args = list(call_args)
            x_t = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
            if x_t is None:
                raise ModelError(f"{type(den).__name__} was called without its noisy input (expected it first, or "
                                 f"as hidden_states= or sample=; got keywords {sorted(kwargs)}); AutoQuantize "
                                 "supports diffusers denoisers only")
            t = torch.as_tensor(args[1] if len(args) > 1 else kwargs.get("timestep")).long().reshape(-1)
            a = alphas[t.cpu()].float().reshape(-1, 1, 1, 1)
            x0b = x0.repeat(x_t.shape[0] // x0.shape[0], 1, 1, 1).to(x_t.device)
            target = (x_t.float() - a.sqrt().to(x_t.device) * x0b) / (1 - a).sqrt().to(x_t.device)
            out.append((tuple(args), dict(kwargs), target))
    return out


def recipe_candidates(info: ModelInfo, formats: Sequence[str], modules: Sequence[torch.nn.Module]) -> list[list[str]]:
    """Per layer, per format slot: the candidate ModelOpt's recipes quantize it as (:data:`MODELOPT_RECIPES` on
    Linear layers where the layer takes the variant; the plain format otherwise)."""
    out = []
    for layer, module in zip(info.layers, modules, strict=True):
        linear = isinstance(module, torch.nn.Linear)
        out.append([MODELOPT_RECIPES[f] if linear and f in MODELOPT_RECIPES and MODELOPT_RECIPES[f] in layer.eligible
                     else f for f in formats])
    return out


def autoquantize_scores(pipe: Any, info: ModelInfo | None = None,
                        formats: Sequence[str] = ("fp", "int8", "nvfp4", "int4"), *,
                        labels: Sequence = tuple(range(10)), seeds: Sequence[int] = (0, 1), steps: int = 20,
                        guidance_scale: float | None = None, recipes: bool = False,
                        calibration: dict | None = None) -> np.ndarray:
    """(L, F) ModelOpt gradient scores of every candidate layer on the profile's calls (see the module doc).
    ``recipes``: each format slot scored with its ModelOpt recipe's candidate (:func:`recipe_candidates`),
    quantized with ``calibration`` (layer name -> Calibration, e.g. ``Profile.calibration(names)``)."""
    if any(":" in f for f in formats):
        raise UsageError(f"AutoQuantize runs ModelOpt's formats, not mpsearch's variants; got {list(formats)}: pass "
                         "the plain formats (a profile made with variants='none', or profile.select_formats), and "
                         "recipes=True for ModelOpt's calibrated recipes")
    den = get_denoiser(pipe)
    info = info or describe(den)
    named = dict(den.named_modules())
    modules = [named[l.name] for l in info.layers]
    make = None
    if recipes:
        from mpsearch.quantizers import quantize_candidate  # lazy: the round-to-nearest rival needs no quantizers
        cands = recipe_candidates(info, formats, modules)
        calibration = calibration or {}
        missing = sorted({info.layers[li].name for li, row in enumerate(cands) if any(":" in c for c in row)}
                         - set(calibration))
        if missing:
            raise UsageError(f"AutoQuantize's recipes need the calibration of {len(missing)} layers (e.g. "
                             f"{missing[0]}); pass calibration=profile.calibration(...) from a profile made with "
                             "variants")
        slot = {f: i for i, f in enumerate(formats)}
        made: dict = {}  # the weights do not change between calls: each candidate is calibrated once

        def make(li, f, w):
            key = (li, f)
            if key not in made:
                made[key] = quantize_candidate(cands[li][slot[f]], w, calibration.get(info.layers[li].name))
            return made[key]

    batches = denoising_batches(pipe, labels, seeds, steps, guidance_scale)
    return gradient_scores(den, batches, modules, formats, [set(l.eligible) for l in info.layers], packed=make)


def autoquantize_search(scores: np.ndarray, costs: np.ndarray, max_size: float, *,
                        lower_bounds: Sequence[float | None] = (None, 0.99, 0.90)) -> tuple[np.ndarray | None, str]:
    """ModelOpt's ``LPS`` for the gradient searcher: 0/1 variables, one-hot per layer, minimize the summed
    scores, ``lower * max_size <= sum costs <= max_size``; tried without a lower bound first, then with each
    lower bound until CBC reports Optimal. ``scores`` / ``costs``: (L, F), inf = not a candidate.
    Returns ``(choice (L,) format indices, status)``."""
    import warnings

    import pulp

    scores, costs = np.asarray(scores, dtype=float), np.asarray(costs, dtype=float)
    # one positive factor on the objective leaves the program's optimum unchanged; without it CBC's absolute
    # tolerances (about 1e-7) treat a denoiser's scores (1e-11..1e-7 on the embedded models) as all zero
    finite = scores[np.isfinite(scores)]
    top = float(finite.max()) if finite.size else 0.0
    scores = scores / top if top > 0 else scores
    cand = [[f for f in range(scores.shape[1]) if np.isfinite(scores[l, f])] for l in range(scores.shape[0])]
    status, sel = "Not Solved", None
    for lower in lower_bounds:
        prob = pulp.LpProblem("AutoQuantize", pulp.LpMinimize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            z = [[pulp.LpVariable(f"z{l}_{f}", lowBound=0, upBound=1, cat=pulp.LpBinary) for f in c]
                  for l, c in enumerate(cand)]
        prob += pulp.lpSum(v * float(scores[l, f])
                           for l, c in enumerate(cand) for v, f in zip(z[l], c, strict=True)), "L"
        for vs in z:
            prob += pulp.lpSum(vs) == 1
        total = pulp.lpSum(v * float(costs[l, f]) for l, c in enumerate(cand) for v, f in zip(z[l], c, strict=True))
        prob += total <= float(max_size)
        if lower is not None:
            prob += total >= float(lower) * float(max_size)
        with warnings.catch_warnings():  # PuLP 3's notices about its 4.0 API
            warnings.simplefilter("ignore", DeprecationWarning)
            prob.solve(pulp.PULP_CBC_CMD(msg=False))
        status = pulp.LpStatus[prob.status]
        sel = np.array([c[int(np.argmax([v.varValue or 0.0 for v in vs]))] for vs, c in zip(z, cand, strict=True)])
        if status == "Optimal":
            break
    return sel, status


def autoquantize_select(scores: np.ndarray, nominal: np.ndarray, real: np.ndarray, fixed_bytes: int,
                        budget_bytes: int, *, fit: bool = False, iterations: int = 14) -> dict:
    """AutoQuantize at a real byte budget. ``fit=False``: as a user states it to ModelOpt, the cap on the
    effective-bits size is the budget (minus the bytes no layer choice changes); its real bytes may exceed the
    budget. ``fit=True``: the re-run a user makes when it does not fit: the largest cap (bisection) whose
    plan's real bytes fit. Returns ``{"choice", "status", "real_bytes", "cap"}``."""
    nominal, real = np.asarray(nominal, dtype=float), np.asarray(real, dtype=float)
    rows = np.arange(len(nominal))

    def run(cap):
        choice, status = autoquantize_search(scores, nominal, cap)
        return {"choice": choice, "status": status, "cap": float(cap),
                "real_bytes": int(fixed_bytes + real[rows, choice].sum())}

    first = run(budget_bytes - fixed_bytes)
    if not fit or (first["status"] == "Optimal" and first["real_bytes"] <= budget_bytes):
        return first
    finite = np.where(np.isfinite(scores), nominal, np.inf)
    lo, hi, best = float(finite.min(axis=1).sum()), float(budget_bytes - fixed_bytes), None
    for _ in range(iterations):
        cap = (lo + hi) / 2
        r = run(cap)
        if r["status"] == "Optimal" and r["real_bytes"] <= budget_bytes:
            best, lo = r, cap
        else:
            hi = cap
    if best is None:
        r = run(lo)
        if r["status"] == "Optimal" and r["real_bytes"] <= budget_bytes:
            best = r
    return best or first
