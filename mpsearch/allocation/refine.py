"""Refine the ILP's plan with real generations: the "optuna" solver with an end-to-end objective.

``evaluation_objective`` turns a per-layer choice into a plan, applies it, generates a few images on
search seeds (never the held-out evaluation seeds) with few steps, and scores them against the full-precision
images: ``content`` = 1 - SSIM (structure), ``quality`` = relative MSE (pixel error). ``refine`` runs the
search (seeded with the ILP's answers) and returns the chosen Plan with the search's report.

A pick chosen on one search seed can fit that seed rather than the model (bench_search_plus saw a pick
score 0.75x the ILP's plan on its seed and 1.22x worse held out), so a pick other than the ILP's plan is kept
only if it beats that plan on fresh validation images by a one-sided Wilcoxon signed-rank test on the
per-image differences (:func:`validate_pick`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.allocation.config import SolveConfig
from mpsearch.allocation.formulation import Formulation, as_formulation
from mpsearch.allocation.solvers import DEFAULT_SOLVER, Problem, get_solver
from mpsearch.allocation.solvers.optuna_search import OptunaSolver, problem_digest
from mpsearch.errors import UsageError
from mpsearch.metrics import ssim
from mpsearch.models import ModelInfo
from mpsearch.plan import Plan
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate_many

#: seeds the search generates with: disjoint from profiling (0, 1, ...) and evaluation (1000, ...)
SEARCH_SEEDS = (500,)
#: seeds that check the search's pick against the ILP's plan before it is kept (disjoint from all of the above)
VALIDATION_SEEDS = (501, 502, 503)
#: significance a pick's paired per-image advantage over the ILP's plan must reach on the validation images
VALIDATION_ALPHA = 0.05


def evaluation_objective(pipe: Any, info: ModelInfo, problem: Problem, *, decode: Callable | None = None,
                         labels: Sequence = tuple(range(10)), seeds: Sequence[int] = SEARCH_SEEDS, steps: int = 8,
                         guidance_scale: float | None = None, per_image: bool = False,
                         calibration: dict | None = None) -> Callable[[Any], dict]:
    """A callable ``choice -> {"content": 1 - SSIM, "quality": relative MSE}`` against full precision.

    With ``per_image``, the mapping also holds ``"per_image": {"content": (N,), "quality": (N,)}``, each image's
    own score, whose means are the two totals."""

    reference = generate_many(pipe, labels, seeds, steps, guidance_scale)
    power = float(np.mean(np.square(reference))) or 1.0

    def evaluate(choice) -> dict:
        assignment, overrides = (problem.assignment(choice), []) if decode is None else decode(choice)
        plan = Plan.from_assignment(info, assignment, overrides=overrides, calibration=calibration)
        with apply_plan(pipe, plan, stash="memory", ignore_weights=True):
            images = generate_many(pipe, labels, seeds, steps, guidance_scale)
        if not per_image:
            return {"content": max(0.0, 1.0 - float(ssim(reference, images))),
                    "quality": float(np.mean(np.square(images - reference))) / power}
        content = 1.0 - np.asarray(ssim(reference, images, per_image=True))
        quality = np.square(np.asarray(images, np.float64) - reference).reshape(len(images), -1).mean(axis=1) / power
        return {"content": max(0.0, float(content.mean())), "quality": float(quality.mean()),
                "per_image": {"content": content, "quality": quality}}

    return evaluate


def validate_pick(pick: dict, base: dict, alpha: float = VALIDATION_ALPHA) -> dict:
    """Whether the search's pick beats the ILP's plan on the validation images (``evaluation_objective`` with
    ``per_image``): each image scores ``(content / ILP's mean content + quality / ILP's mean quality) / 2``, so
    the ILP's plan averages 1; the pick is kept only if its mean is below 1 *and* a one-sided Wilcoxon
    signed-rank test on the paired per-image differences gives p < ``alpha``.

    Returns ``{"score_vs_ilp", "p_value", "images", "kept": "search" | "ilp"}``."""
    from scipy.stats import wilcoxon

    per_pick, per_base = pick["per_image"], base["per_image"]
    scale = {k: max(float(np.mean(per_base[k])), 1e-30) for k in ("content", "quality")}
    score = lambda per: 0.5 * sum(np.asarray(per[k], np.float64) / scale[k] for k in scale)  # noqa: E731
    s_pick, s_base = score(per_pick), score(per_base)
    ratio = float(np.mean(s_pick) / np.mean(s_base))
    diff = np.asarray(s_pick - s_base)
    p = 1.0 if not np.any(diff) else float(wilcoxon(diff, alternative="less").pvalue)
    return {"score_vs_ilp": ratio, "p_value": p, "images": int(len(diff)),
            "kept": "search" if ratio < 1.0 and p < alpha else "ilp"}


def _check_search(seeds, validation_seeds, steps) -> None:
    """The search's seeds (distinct integers >= 0; the validation ones may be empty) and steps (>= 1)."""
    for name, given, empty_ok in (("search seeds", seeds, False), ("validation seeds", validation_seeds, True)):
        values = list(given)
        if (not values and not empty_ok) or len(set(values)) != len(values) or any(
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
            raise UsageError(f"{name} must be distinct integers >= 0, got {values}; pass e.g. 500,501")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UsageError(f"search steps must be an integer >= 1 (denoising steps per trial), got {steps!r}; "
                         "pass e.g. 8")


def refine(profile: Any, pipe: Any, budget: Any = None, *, trials: int = 30, storage: str | None = None,
           study_name: str | None = None, sampler: str = "nsga2", seed: int = 0, labels: Sequence = tuple(range(10)),
           seeds: Sequence[int] = SEARCH_SEEDS, steps: int = 8, progress: bool = False,
           validation_seeds: Sequence[int] = VALIDATION_SEEDS, config: SolveConfig | None = None,
           **objective: Any) -> tuple[Plan, dict]:
    """Search from the ILP's plans with real generations; returns ``(plan, report)``.

    ``profile`` is a Profile, its path, or a :class:`~mpsearch.allocation.formulation.Formulation`; ``config``
    (a :class:`~mpsearch.allocation.config.SolveConfig`) and the ``objective`` keywords (``metric``, ``pins``,
    ``role_pins``, ``tie``, ``compute``, ...) are :func:`~mpsearch.allocation.formulation.formulate`'s (a
    compute budget's layer calls are recorded on ``pipe``). ``budget``: default the config's, else 60%.

    A search on a few seeds can fit them rather than the model: when it picks a plan other than the ILP's, both
    are scored again on ``validation_seeds`` and the ILP's plan is kept unless the pick is significantly better
    there too (:func:`validate_pick`; ``report["validation"]``; ``()`` skips the check).

    ``storage`` (an SQLAlchemy URL; None: in memory) keeps the study; the same profile, budget and search
    settings load it again and continue up to ``trials`` finished trials.
    """
    from tqdm.auto import tqdm

    extra = {} if isinstance(profile, Formulation) else {"pipe": pipe}  # a Formulation carries its own
    _check_search(seeds, validation_seeds or (), steps)
    if budget is None:  # the Formulation's or config's own budget, else 60%
        own = profile.budget if isinstance(profile, Formulation) else None if config is None else config.budget
        budget = "60%" if own is None else own
    form = as_formulation(profile, budget, "refine", config=config, **extra, **objective)
    info, problem, decode = form.profile.info, form.problem, form.decode
    settings = {"labels": list(labels), "seeds": list(seeds), "steps": int(steps), "sampler": sampler, "seed": seed}
    if study_name is None:
        tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        study_name = f"mpsearch-{problem_digest(problem, ('content', 'quality'))}-{tag}"
    calibration = form.profile.calibration()  # the variants' input statistics (a profile with variants)
    evaluate = evaluation_objective(pipe, info, problem, decode=decode, labels=labels, seeds=seeds, steps=steps,
                                    calibration=calibration)
    bar = tqdm(total=trials, desc="optuna", unit="trial", disable=not progress)
    solver = get_solver("optuna", trials=trials, evaluate=evaluate, objectives=("content", "quality"),
                        sampler=sampler, seed=seed, storage=storage, study_name=study_name,
                        callback=lambda t: bar.update(1))
    assert isinstance(solver, OptunaSolver)  # the "optuna" name; for mypy, which reads get_solver's BaseSolver
    try:
        sol = solver.solve(problem)
    finally:
        bar.close()
    seconds = sol.seconds
    report: dict = dict(solver.report) if solver.report else {"trials": 0, "note": "the budget does not bind"}
    report.update(settings=settings, storage=storage)
    chosen, reference = report.get("chosen"), report.get("reference")
    if validation_seeds and chosen and reference and chosen["trial"] != reference["trial"]:
        ilp = get_solver(DEFAULT_SOLVER).solve(problem)
        check = evaluation_objective(pipe, info, problem, decode=decode, labels=labels, seeds=validation_seeds,
                                     steps=steps, per_image=True, calibration=calibration)
        verdict = validate_pick(check(sol.choice), check(ilp.choice))
        report["validation"] = {"seeds": list(validation_seeds), **verdict}
        if report["validation"]["kept"] == "ilp":
            sol = ilp
    plan = form.to_plan(
        sol, predictions={"search": {k: report.get(k) for k in ("reference", "chosen", "trials", "feasible_trials",
                                                                  "validation")}},
        provenance={"solver": "optuna", "seconds": round(float(seconds), 4), "seeded_by": DEFAULT_SOLVER,
                    "study": study_name, "search": settings})
    return plan, report


def default_storage(profile_path: str | Path) -> str:
    """``sqlite:///studies/<profile>.db``: the local study file when no ``--storage`` is given (its folder is made
    when the study opens, so a refused search leaves nothing behind)."""
    return f"sqlite:///{Path('studies') / f'{Path(profile_path).stem}.db'}"
