"""`mpsearch demo`: the whole flow on an embedded default model, compared with uniform formats."""

from __future__ import annotations

import time

from mpsearch.allocation.solving import solve
from mpsearch.apps.evaluate import HELD_OUT_SEEDS, evaluate_plan
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.apps.profile import ProfileConfig, default_profile_path, profile
from mpsearch.budget import format_bytes
from mpsearch.classifier import load_classifier
from mpsearch.models import describe
from mpsearch.plan import Plan
from mpsearch.runtime.generation import generate_many


def comparison_budgets(info) -> dict[str, int]:
    """The byte budgets the demo compares: uniform nvfp4, uniform int4, halfway int8..int4."""
    uni = {f: Plan.uniform(info, f).predicted_bytes for f in ("int8", "nvfp4", "int4")}
    return {"=nvfp4": uni["nvfp4"], "=int4": uni["int4"], "int8..int4": (uni["int8"] + uni["int4"]) // 2}


def run_demo(model: str = "default", *, progress: bool = True, steps: int = 20, seeds=HELD_OUT_SEEDS) -> dict:
    """Profile (or resume), solve at three budgets, score solved and uniform plans on held-out seeds."""

    pipe = load_pipeline(model)
    info = describe(pipe)
    t0 = time.perf_counter()
    prof = profile(pipe, ProfileConfig(steps=steps), out=default_profile_path(model), progress=progress)
    t_profile = time.perf_counter() - t0
    clf = load_classifier()
    labels = tuple(range(10))
    reference = generate_many(pipe, labels, seeds, steps)
    rows = []

    def score(name, plan, budget_name):
        s = evaluate_plan(pipe, plan, labels=labels, seeds=seeds, steps=steps, reference=reference, classifier=clf)
        rows.append({"budget": budget_name, "plan": name, **s})

    for fmt in ("int8", "nvfp4", "int4"):
        score(f"uniform-{fmt}", Plan.uniform(info, fmt), "-")
    for bname, nbytes in comparison_budgets(info).items():
        plan = solve(prof, nbytes, role_pins={})  # equal bytes to a uniform plan: no role pins
        plan.save(f"plans/{model}-demo-{bname.replace('=', '').replace('..', '-')}.yaml")
        score("mpsearch", plan, f"{bname} ({format_bytes(nbytes)})")
    lines = [f"{model}: {info.denoiser_class}, full precision {format_bytes(info.fp_bytes)}; "
             f"profile {prof.path} ({t_profile:.1f} s)",
             f"held-out seeds {list(seeds)} x labels 0-9, {steps} steps; error against full precision:", ""]
    header = f"{'budget':24s} {'plan':16s} {'bytes':>10s} {'MSE':>9s} {'SSIM':>7s} {'class agr.':>10s}"
    lines += [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['budget']:24s} {r['plan']:16s} {r['bytes']:>10,d} {r['mse']:9.5f} {r['ssim']:7.4f} "
                     f"{r.get('class_agreement', float('nan')):10.2f}")
    return {"model": model, "profile": str(prof.path), "profile_seconds": t_profile, "rows": rows, "lines": lines}
