"""Cache schedules on the default models: dp vs uniform vs threshold at the same number of full computations.

For each default model and each K out of 20 steps: the image error against full precision (MSE, SSIM on
held-out seeds) of the three schedulers, without quantization and with a uniform INT8 plan (costs measured on
the INT8 model there), and the measured wall-clock speedup against the same model without the cache, beside
the ideal 20/K and the ideal given the unit's share of compute. Writes the `cache` section of
docs/benchmarks.md and docs/img/cache_schedules.png.

    python scripts/bench_cache.py [--seeds 1000] [--ks 5,10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchdoc import write_section
from mpsearch.cache import get_unit, ideal_speedup, make_schedule
from mpsearch.cache.joint import cache_section
from mpsearch.cache.measure import measure_costs
from mpsearch.evaluate import image_scores
from mpsearch.executor import apply_plan
from mpsearch.generation import generate_many
from mpsearch.cache.units import compute_shares
from mpsearch.models import get_denoiser
from mpsearch.pipeline import load_pipeline
from mpsearch.plan import Plan

LABELS = tuple(range(10))
STEPS = 20
WARMUP = 2
METHODS = ("dp", "uniform", "threshold", "dp-feature")
IMG = Path(__file__).resolve().parent.parent / "docs" / "img" / "cache_schedules.png"


def _run(pipe, plan, seeds):
    handle = apply_plan(pipe, plan) if plan is not None else None
    try:
        t0 = time.perf_counter()
        images = generate_many(pipe, LABELS, seeds, STEPS)
        return images, time.perf_counter() - t0
    finally:
        if handle is not None:
            handle.remove()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1000")
    ap.add_argument("--ks", default="5,10")
    args = ap.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    ks = [int(k) for k in args.ks.split(",")]
    rows = ["| model | quant | K | ideal 20/K | ideal (share) | method | MSE | SSIM | measured speedup | schedule |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    results = {}
    notes = []
    for model in ("default", "default-unet"):
        pipe = load_pipeline(model)
        den = get_denoiser(pipe)
        unit = get_unit(den)
        share = compute_shares(den, [unit])[unit.name]
        generate_many(pipe, LABELS[:2], (0,), 2)  # warm-up
        reference, _ = _run(pipe, None, seeds)
        int8 = Plan.uniform(pipe, "int8")
        base_plans = {"fp": Plan.uniform(pipe, "fp"), "int8": int8}
        notes.append(f"{model}: unit `{unit.name}` ({', '.join(unit.modules)}), {share:.0%} of a step's FLOPs")
        for quant, base in base_plans.items():
            qplan = base if quant != "fp" else None
            cost = measure_costs(pipe, unit, STEPS, plan=qplan)  # output error, the default target
            fcost = measure_costs(pipe, unit, STEPS, plan=qplan, target="feature")
            images, t_nocache = _run(pipe, base, seeds)
            s = image_scores(reference, images)
            rows.append(f"| {model} | {quant} | 20 | 1.00 | 1.00 | no cache | {s['mse']:.2e} | {s['ssim']:.4f} | 1.00 | - |")
            for k in ks:
                for method in METHODS:
                    if method == "dp-feature":  # DP on the cruder feature-change costs
                        sched = make_schedule("dp", fcost, k, warmup=WARMUP)
                    else:
                        sched = make_schedule(method, cost, k, warmup=WARMUP)
                    plan = Plan.from_dict({**base.to_dict(), "cache": cache_section(
                        unit, sched, warmup=WARMUP, max_reuse=None, costs="measured", share=share)})
                    images, t = _run(pipe, plan, seeds)
                    s = image_scores(reference, images)
                    results[(model, quant, k, method)] = s
                    pattern = "".join("C" if c else "." for c in sched.compute)
                    rows.append(f"| {model} | {quant} | {k} | {STEPS / k:.2f} | {ideal_speedup(k, STEPS, share):.2f} | "
                                f"{method} | {s['mse']:.2e} | {s['ssim']:.4f} | {t_nocache / t:.2f} | `{pattern}` |")
                    print(rows[-1], flush=True)
    _plot(results, ks)
    wins = sum(results[(m, q, k, "dp")]["mse"] <= min(results[(m, q, k, x)]["mse"] for x in ("uniform", "threshold"))
               for (m, q, k, meth) in results if meth == "dp")
    total = sum(1 for key in results if key[3] == "dp")
    body = "\n".join([
        "Image error of cached generation against the full-precision model without cache, on held-out seeds "
        f"{', '.join(map(str, seeds))} x labels 0-9, 20 DDIM steps, warm-up {WARMUP} steps, last step computed, no "
        "limit on consecutive reuses. `dp`, `uniform` and `threshold` schedule on output-error costs (the denoiser "
        "output's error when reusing step s's features at step u, weighted by the DDIM step gain); `dp-feature` is the "
        "same DP on the relative change of the cached feature itself. Reuse costs are measured on a short run (labels 0, 3, 5, 8, seed 0) of the "
        "same model; with INT8 they are measured on the INT8 model. `quant` = the plan's layer formats (uniform "
        "INT8 = W8A8); `measured speedup` = wall time of the same plan without the cache / with it (same process, "
        "CPU, one run each: noisy on a shared machine). `ideal (share)` = 20 / (K + (20-K)(1-share)), share = the "
        "unit's fraction of a step's FLOPs; `ideal 20/K` assumes the whole step is skipped.",
        "", *[f"- {n}" for n in notes], "",
        f"DP has the lowest MSE (or ties) in {wins} of {total} (model, quant, K) cells.", "",
        *rows, "", f"![cache schedules](img/{IMG.name})"])
    write_section("cache", "Cache schedules: dp vs uniform vs threshold", body,
                  f"python scripts/bench_cache.py --seeds {args.seeds} --ks {args.ks}")
    print(f"wrote docs/benchmarks.md and {IMG}")


def _plot(results, ks):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 7), sharex=True)
    for i, model in enumerate(("default", "default-unet")):
        for j, quant in enumerate(("fp", "int8")):
            ax = axes[i][j]
            for method, style in zip(METHODS, ("o-", "s--", "^:", "x-.")):
                ax.plot(ks, [results[(model, quant, k, method)]["mse"] for k in ks], style, label=method)
            ax.set_yscale("log")
            ax.set_title(f"{model}, {quant}")
            ax.set_xlabel("full computations K (of 20)")
            ax.set_ylabel("MSE vs full precision")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    IMG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG, dpi=100)


if __name__ == "__main__":
    main()
