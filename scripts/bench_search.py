"""The search slice on the default models: solved plans vs uniform formats at equal bytes; profiling and
solving cost.

For each default model: profile (local tier, default conditions) into a fresh file and time it against one
full-precision generation of the same conditions; solve at the byte budgets of uniform NVFP4, of uniform INT4,
and halfway between uniform INT8 and INT4; score every plan on held-out seeds. Then time the solvers on a
synthetic 2,000-layer x 4-format problem.

    python scripts/bench_search.py [--seeds 1000,1001,1002,1003,1004]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_solver import synthetic_problem
from benchdoc import write_section

from mpsearch.allocation.solvers import get_solver
from mpsearch.allocation.solving import solve
from mpsearch.apps.demo import comparison_budgets
from mpsearch.apps.evaluate import evaluate_plan
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.apps.profile import ProfileConfig, profile
from mpsearch.budget import format_bytes
from mpsearch.classifier import load_classifier
from mpsearch.models import describe
from mpsearch.plan import Plan
from mpsearch.runtime.generation import generate_many

LABELS = tuple(range(10))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1000,1001,1002,1003,1004")
    args = ap.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    clf = load_classifier()
    quality = ["| model | budget | plan | bytes | MSE | SSIM | PSNR | class agreement |",
               "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    cost = ["| model | layers x formats x steps | one fp generation of the conditions | profile | ratio | "
            "ILP solve (3 budgets, each) |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    verdicts = []
    for model in ("default", "default-unet"):
        pipe = load_pipeline(model)
        info = describe(pipe)
        config = ProfileConfig()
        generate_many(pipe, LABELS, (0,), 2)  # warm-up
        t0 = time.perf_counter()
        generate_many(pipe, config.labels, config.seeds, config.steps)
        t_gen = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            prof = profile(pipe, config, out=Path(tmp) / "p.sqlite", progress=False)
            t_prof = time.perf_counter() - t0
        reference = generate_many(pipe, LABELS, seeds, 20)

        def score(plan, pipe=pipe, reference=reference):  # bound: used only for this model
            return evaluate_plan(pipe, plan, labels=LABELS, seeds=seeds, reference=reference, classifier=clf)

        uniform = {f: score(Plan.uniform(info, f)) for f in ("int8", "nvfp4", "int4")}
        for f, s in uniform.items():
            quality.append(f"| {model} | - | uniform {f} | {s['bytes']:,} | {s['mse']:.5f} | {s['ssim']:.4f} | "
                           f"{s['psnr']:.2f} | {s['class_agreement']:.2f} |")
        solve_times = []
        for bname, nbytes in comparison_budgets(info).items():
            plan = solve(prof, nbytes, role_pins={})  # like the uniform plans: no layer held back by role
            solve_times.append(plan.provenance["seconds"])
            s = score(plan)
            quality.append(f"| {model} | {bname} ({format_bytes(nbytes)}) | **mpsearch** ({_counts(plan)}) | "
                           f"{s['bytes']:,} | {s['mse']:.5f} | {s['ssim']:.4f} | {s['psnr']:.2f} | "
                           f"{s['class_agreement']:.2f} |")
            base = {"=nvfp4": "nvfp4", "=int4": "int4", "int8..int4": "int4"}[bname]
            b = uniform[base]
            equal = s["bytes"] <= b["bytes"]  # a plan with more bytes than the uniform one is not "better" than it
            word = ('better' if s['mse'] < b['mse'] else 'NOT better') if equal else \
                "not comparable: more bytes than the uniform plan"
            verdicts.append(f"{model} at {bname}: mpsearch MSE {s['mse']:.5f} vs uniform {base} {b['mse']:.5f} "
                            f"({word}), SSIM {s['ssim']:.4f} vs {b['ssim']:.4f}, bytes {s['bytes']:,} vs "
                            f"{b['bytes']:,} (no significance test: scripts/bench_all.py makes the paired comparison)")
            print(quality[-1], flush=True)
        L, F, S = prof.stats.shape[:3]
        cost.append(f"| {model} | {L} x {F} x {S} | {t_gen:.2f} s | {t_prof:.2f} s | {t_prof / t_gen:.2f}x | "
                    f"{max(solve_times):.3f} s |")
    problem, _ = synthetic_problem(2000, 0)
    full = int(problem.nbytes[:, 0].sum()) + problem.fixed_bytes
    synth = ["| solver | budget | seconds | status |", "| --- | --- | ---: | --- |"]
    for frac in (0.35, 0.45, 0.60):
        for name in ("cbc", "highs", "greedy"):
            t0 = time.perf_counter()
            sol = get_solver(name).solve(problem.with_budget(int(frac * full)))
            synth.append(f"| {name} | {frac:.0%} of fp | {time.perf_counter() - t0:.3f} | {sol.status} |")
    body = "\n".join([
        f"Profile: labels 0-9 x seeds {list(ProfileConfig().seeds)}, 20 steps, formats int8/nvfp4/int4, guidance "
        f"as the pipeline's default. Scores: held-out seeds {list(seeds)} x labels 0-9 (20 steps), against the "
        "full-precision images of the same seeds; class agreement is the default classifier's recognition of "
        "the requested digit. Budgets are exact byte totals of the denoiser. The solved plans use no default role "
        "pins (`role_pins={}`), like the uniform plans they are compared with.", "",
        "### Image error at equal bytes", "", *quality, "", *[f"- {v}" for v in verdicts], "",
        "### Cost", "", *cost, "", "Synthetic 2,000 layers x 4 formats (the problem of `scripts/bench_solver.py`):", "",
        *synth])
    print(body)
    write_section("bench_search", "Search: solved plans vs uniform formats", body,
                  f"python scripts/bench_search.py --seeds {args.seeds}")


def _counts(plan) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(plan.format_counts().items()))


if __name__ == "__main__":
    main()
