"""Collecting a report's numbers and images: :func:`gather_report`.

It loads the profile, the plans and the model, checks they were made for one model, takes the sensitivity
heatmaps from the profile, solves the Pareto sweep with and without the default role pins, prices every variant
(full precision, the plans, the uniform baselines) under the solver's objective, and, given a model, generates
each variant's images and scores them against full precision. Nothing here draws or writes files.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mpsearch.allocation.objective import build_problem, resolve_metric
from mpsearch.allocation.pareto import pareto
from mpsearch.apps.evaluate import image_scores
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.apps.report.data import ReportData, Variant
from mpsearch.errors import PlanError, ProfileError, UsageError
from mpsearch.formats import available_formats
from mpsearch.models import describe, measured_bytes
from mpsearch.plan import Plan
from mpsearch.profiling.store import LOCAL_METRICS, Profile
from mpsearch.prompts import builtin_prompts
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import default_conditions, generate

__all__ = ["gather_report"]


def _plan_objective(problem, plan_layers: list[str]) -> float | None:
    """The solver objective of an assignment under ``problem`` (None where a format is not in the profile)."""
    index = {f: i for i, f in enumerate(problem.formats)}
    if any(f not in index for f in plan_layers):
        return None
    choice = np.array([index[f] for f in plan_layers], dtype=np.int64)
    value = problem.objective(choice)
    return float(value) if math.isfinite(value) else None


def _variant_from_plan(name: str, kind: str, plan, source=None) -> Variant:
    cache, label = None, ""
    if plan.cache is not None:
        cache = [bool(c) for c in plan.cache["compute"]]
        unit = plan.cache.get("unit", {}).get("name", "?")
        label = f"{plan.cache.get('method', 'cache')}, unit {unit}: {sum(cache)}/{len(cache)} steps computed"
    return Variant(name=name, kind=kind, source=source, layers=list(plan.layers.values()),
                   bytes=int(plan.predictions["bytes"]) if "bytes" in plan.predictions else None,
                   formats=plan.format_counts(), cache=cache, cache_label=label)


def gather_report(profile=None, plans=(), model=None, *, labels=None, seed: int = 0,
                  steps: int | None = None, metric: str = "auto", points: int = 12, images: bool = True,
                  uniform_formats=None, log: Callable[[str], None] | None = None) -> ReportData:
    """Collect a report's data.

    ``profile``: a Profile or its path (None: no heatmaps, no frontier). ``plans``: plan files or Plan objects.
    ``model``: a pipeline object or a name/folder for ``load_pipeline`` (None: no images). Images use
    ``labels`` (class ids or prompts; None: ``mpsearch.runtime.generation.default_conditions``, held-out built-in
    prompts for a text-to-image pipeline, else 0..9), one ``seed`` and ``steps`` steps (default: the plans' cache
    schedule length, else 20). ``points``: budgets of the Pareto sweep. ``uniform_formats``: the uniform baselines
    (default: the profile's formats, or every primary format).
    """

    say = log or (lambda _msg: None)
    if profile is None and not plans and model is None:
        raise UsageError("a report needs a profile (--profile), a plan (--plan) or a model to generate with")
    prof = None
    if profile is not None:
        prof = profile if isinstance(profile, Profile) else Profile.load(profile)
        metric = resolve_metric(prof, metric)
    loaded = []
    for p in plans:
        plan = p if isinstance(p, Plan) else Plan.load(p)
        loaded.append((Path(p).stem if not isinstance(p, Plan) else f"plan {len(loaded) + 1}",
                       None if isinstance(p, Plan) else str(p), plan))
    pipe = None
    if model is not None and images:
        if isinstance(model, (str, os.PathLike)):

            say(f"loading {model}")
            pipe = load_pipeline(model)
        else:
            pipe = model
    info = prof.info if prof is not None else (describe(pipe) if pipe is not None else None)
    if prof is not None and pipe is not None and describe(pipe).fingerprint != prof.info.fingerprint:
        raise ProfileError(f"the profile {prof.path} was made for another model than {_model_name(model)} "
                              f"({prof.info.denoiser_class}, fingerprint {prof.info.fingerprint}); give the "
                              "matching --model or profile")
    for name, source, plan in loaded:
        if info is not None and plan.fingerprint != info.fingerprint:
            raise PlanError(f"plan {source or name} was made for another model ({plan.model_class}, fingerprint "
                            f"{plan.fingerprint}) than the report's ({info.denoiser_class}, fingerprint "
                            f"{info.fingerprint}); give plans, profile and model that match")

    data = ReportData(title=f"mpsearch report: {info.denoiser_class if info else loaded[0][2].model_class}",
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      model=_model_name(model), profile=str(prof.path) if prof is not None and prof.path else None)
    if info is not None:
        data.denoiser_class, data.fp_bytes = info.denoiser_class, info.fp_bytes
        data.layer_names = list(info.names)
        data.roles = [layer.role.value for layer in info.layers]
    else:
        data.layer_names = list(loaded[0][2].layers)

    problem = None
    if prof is not None:

        data.formats, data.steps = list(prof.formats), prof.steps
        data.heatmaps = {m: prof.metric(m) for m in LOCAL_METRICS if m in prof.metrics}
        problem = build_problem(prof, None, metric=metric)
        if points >= 2:

            say(f"solving {points} budgets for the Pareto frontier, with and without the default role pins")
            curves, uniform = {}, {}
            for label, role_pins in (("default role pins", None), ("no pins", {})):
                r = pareto(prof, n=points, metric=metric, role_pins=role_pins)
                uniform = r["uniform"]
                curves[label] = [{"budget_bytes": p.budget_bytes, "total_bytes": p.total_bytes,
                                  "objective": p.objective, "on_frontier": p.on_frontier}
                                 for p in r["points"] if p.total_bytes is not None]
            data.frontier = {"metric": metric, "uniform": uniform, "curves": curves}

    # variants: full precision, the plans, the uniform baselines
    full = available_formats()[0]  # the registry lists full precision first
    n_layers = len(data.layer_names)
    variants = [Variant("full precision", "fp", layers=[full] * n_layers, formats={full: n_layers},
                        bytes=info.fp_bytes if info is not None else None,
                        objective=0.0 if problem is not None else None)]
    plan_objects = {"full precision": None}
    for name, source, plan in loaded:
        base, k = name, 2
        while name in plan_objects:  # two plans with one file name (in different folders)
            name, k = f"{base} ({k})", k + 1
        v = _variant_from_plan(name, "plan", plan, source)
        if problem is not None:
            v.objective = _plan_objective(problem, v.layers)
        variants.append(v)
        plan_objects[name] = plan
    if info is not None:
        fmts = list(uniform_formats) if uniform_formats is not None else \
            [f for f in (prof.formats if prof is not None else available_formats())
             if f != full and ":" not in f]  # uniform plans of the plain formats (a variant needs calibration)
        for fmt in fmts:
            plan = Plan.uniform(pipe if pipe is not None else info, fmt)
            v = _variant_from_plan(f"uniform {fmt}", "uniform", plan)
            if problem is not None:
                v.objective = _plan_objective(problem, v.layers)
            variants.append(v)
            plan_objects[v.name] = plan
    data.variants = variants

    if prof is None:
        data.notes.append("no profile given (--profile, or run `mpsearch profile`): the sensitivity heatmaps and the "
                          "Pareto frontier are left out")
    if not loaded:
        data.notes.append("no plan given (--plan): the plan-along-the-network and cache sections are left out")
    if pipe is not None:
        if labels is None:
            labels = default_conditions(pipe)
            if labels and isinstance(labels[0], str):
                say(builtin_prompts(len(labels), "heldout").line)
        _gather_images(data, pipe, plan_objects, list(labels), seed, steps, say)
    elif images and model is None:
        data.notes.append("no model given: the report has no images")
    return data


def _model_name(model) -> str | None:
    if model is None:
        return None
    return str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__


def _gather_images(data: ReportData, pipe, plan_objects: dict, conditions: list, seed: int, steps, say) -> None:

    lengths = {len(v.cache) for v in data.variants if v.cache is not None}
    if len(lengths) > 1:
        raise UsageError(f"the plans' cache schedules cover different step counts ({sorted(lengths)}); "
                         "report plans with one step count together")
    if lengths and steps is not None and steps not in lengths:
        raise UsageError(f"--steps {steps} differs from the plans' cache schedule ({lengths.pop()} steps); "
                         "leave --steps out or give the schedule's step count")
    steps = steps if steps is not None else (lengths.pop() if lengths else 20)
    data.image_conditions, data.image_seed, data.image_steps = list(conditions), int(seed), int(steps)
    say(f"generating {len(conditions)} images in full precision")
    reference = generate(pipe, conditions, seed, steps)
    data.images["full precision"] = reference
    data.variants[0].scores = {"bytes": int(measured_bytes(pipe))}
    for v in data.variants[1:]:
        say(f"generating {len(conditions)} images with {v.name}")
        with apply_plan(pipe, plan_objects[v.name]):
            out = generate(pipe, conditions, seed, steps)
            nbytes = measured_bytes(pipe)
        data.images[v.name] = out
        scores = image_scores(reference, out)
        v.scores = {k: float(x) for k, x in scores.items() if not isinstance(x, list)} | {"bytes": int(nbytes)}
