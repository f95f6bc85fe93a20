"""Benchmark the end-to-end tier (mpsearch.allocation.decoupled) on both embedded defaults; writes a section of
docs/benchmarks.md.

For each model: a local profile; the exhaustive end-to-end run (every layer x eligible format: the reference)
against the cheap run (shortlist + step windows): cost ratio, Spearman per metric (local tier vs reference on
every pair; cheap estimates vs reference on every pair); then, at one budget, plans from the decoupled
objective, the local-only objective and a MixDQ-style allocation (name/role-based content and quality groups,
two separate ILPs, a budget-split sweep chosen on the profiling seeds), scored on held-out seeds.

    python scripts/bench_e2e.py [--steps 3] [--labels 0,1,2,3,4,5] [--shortlist 8] [--windows 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import write_section  # noqa: E402

import mpsearch  # noqa: E402
from mpsearch.allocation import decoupled as e2e
from mpsearch.allocation.baselines import CONTENT_ROLES, mixdq_measured_plans  # noqa: E402
from mpsearch.allocation.objective import build_problem  # noqa: E402
from mpsearch.allocation.solvers import min_feasible_bytes  # noqa: E402
from mpsearch.models import DEFAULT_ROLE_PINS  # noqa: E402
from mpsearch.profiling import endtoend as measured  # noqa: E402
from mpsearch.profiling.store import Profile  # noqa: E402
from mpsearch.runtime.generation import generate  # noqa: E402

HELD_OUT = (1000,)
METRICS = ("ssim", "condition", "class_agreement", "psnr", "frechet")


def role_grouped_mixdq(local, budget: int, splits) -> dict:
    """MixDQ-style plans on local costs, the groups by role (content roles vs the rest), with the default role
    pins like the solve() plans here: ``mixdq_measured_plans`` on each group's local cost."""
    cost = build_problem(local, None, role_pins={}).cost
    content = np.array([l.role.value in CONTENT_ROLES for l in local.info.layers])[:, None]
    fin = np.where(np.isfinite(cost), cost, 0.0) + 1e-9  # every layer has some damage in its own group
    return mixdq_measured_plans(local, np.where(content, fin, 0.0), np.where(content, 0.0, fin), budget, splits,
                                role_pins=DEFAULT_ROLE_PINS)

def images(pipe, labels, seeds, steps, plan=None):
    handle = mpsearch.apply_plan(pipe, plan) if plan is not None else None
    try:
        return np.concatenate([generate(pipe, labels, s, steps) for s in seeds])
    finally:
        if handle is not None:
            handle.remove()


def scores(pipe, ref, labels, seeds, steps, plan, scorer, feats):
    out = images(pipe, labels, seeds, steps, plan)
    return measured.score_images(ref, out, [l for _ in seeds for l in labels], scorer, feats)


def combined(rows: dict) -> dict:
    return e2e.combine({k: {m: float(measured.damage(m, v[m], fp[m])) for m in v if m in fp}
                         for k, v in rows.items()}, {"content": 1, "quality": 1})


def run_model(model, args, tmp):
    global fp
    pipe = mpsearch.load_pipeline(model)
    labels = tuple(args.labels)
    t0 = time.perf_counter()
    local = mpsearch.profile(pipe, out=tmp / f"{model}.sqlite", labels=labels, seeds=(0,), steps=args.steps,
                             progress=False)
    t_local = time.perf_counter() - t0
    ref_path, cheap_path = tmp / f"{model}-ref.sqlite", tmp / f"{model}-cheap.sqlite"
    shutil.copy(local.path, ref_path)
    shutil.copy(local.path, cheap_path)
    ref_prof, cheap_prof = Profile.load(ref_path), Profile.load(cheap_path)
    units = measured.exhaustive_units(local.info, local.formats)
    t0 = time.perf_counter()
    measured.measure(pipe, ref_prof, units)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    cheap = e2e.run_end_to_end(pipe, cheap_prof, shortlist_n=args.shortlist, windows=args.windows)
    t_cheap = time.perf_counter() - t0
    ref = measured.load_results(ref_path)
    index = {n: i for i, n in enumerate(local.info.names)}
    pairs = [(index[u["layers"][0]], local.formats.index(u["format"]), res) for u in ref.of_kind("layer")
             for res in [ref.damages(u)]]
    from scipy.stats import spearmanr

    from mpsearch.allocation.objective import layer_costs

    loc = layer_costs(local, "rel_mse")
    rho_local, rho_cheap = {}, {}
    for m in ("ssim", "condition", "psnr", "frechet"):
        y = [d[m] for _, _, d in pairs]
        rho_local[m] = spearmanr([loc[l, f] for l, f, _ in pairs], y).statistic
        est = e2e.e2e_costs(cheap_prof, {m: 1})[0]
        rho_cheap[m] = spearmanr([est[l, f] for l, f, _ in pairs], y).statistic
    # plans at one budget: a third of the way from the smallest feasible size to full precision
    lo = min_feasible_bytes(build_problem(local, None))
    budget = int(lo + args.budget_frac * (local.info.fp_bytes - lo))
    spec = f"{budget}B"
    plans = {"local-only (rel_mse)": mpsearch.solve(local, spec),
             "decoupled, cheap (content=1,quality=1)": mpsearch.solve(cheap_prof, spec,
                                                                      objective_weights="content=1,quality=1"),
             "decoupled, exhaustive reference": mpsearch.solve(ref_prof, spec, objective_weights="content=1,quality=1"),
             "decoupled, cheap + fp activations in 1 window": mpsearch.solve(cheap_prof, spec,
                                                                             objective_weights="content=1,quality=1",
                                                                             fp_act_windows=1)}
    scorer, feats = measured.default_scorers(pipe, labels)
    fp_prof = images(pipe, labels, (0,), args.steps)
    fp = measured.score_images(fp_prof, fp_prof, list(labels), scorer, feats)
    mix = role_grouped_mixdq(local, budget, args.splits)
    picked = {a: scores(pipe, fp_prof, labels, (0,), args.steps, p, scorer, feats) for a, p in mix.items()}
    best = min(combined(picked).items(), key=lambda kv: kv[1])[0] if picked else None
    if best is not None:
        plans[f"MixDQ-style (2 ILPs, split {best} chosen of {sorted(mix)})"] = mix[best]
    ref_imgs = images(pipe, labels, HELD_OUT, args.steps)
    fp = measured.score_images(ref_imgs, ref_imgs, [l for _ in HELD_OUT for l in labels], scorer, feats)
    held = {name: scores(pipe, ref_imgs, labels, HELD_OUT, args.steps, p, scorer, feats) for name, p in plans.items()}
    comb = combined(held)
    nbytes = {name: p.predicted_bytes for name, p in plans.items()}
    return {"model": model, "layers": len(local.info.layers), "exhaustive_units": len(units) + 1,
            "cheap_units": cheap["units"], "cost_ratio": cheap["cost_ratio"], "t_local": t_local, "t_ref": t_ref,
            "t_cheap": t_cheap, "rho_local": rho_local, "rho_cheap": rho_cheap, "rho_shortlist": cheap["spearman"],
            "budget": budget, "held": held, "comb": comb, "bytes": nbytes, "fp_held": fp}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--labels", default="0,1,2,3,4,5")
    ap.add_argument("--shortlist", type=int, default=8)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--budget-frac", type=float, default=0.3)
    ap.add_argument("--splits", default="0.3,0.5,0.7")
    ap.add_argument("--models", default="default,default-unet")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    args.labels = [int(x) for x in args.labels.split(",")]
    args.splits = [float(x) for x in args.splits.split(",")]
    t_all = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            results.append(run_model(model, args, Path(tmp)))
            print(results[-1], flush=True)
    body = [f"Settings: {args.steps} denoising steps, labels {args.labels} x seed 0 for profiling and both "
            f"end-to-end runs (the exhaustive reference at the default 20 steps and 10 labels would take hours on "
            f"2 shared CPUs), held-out seed {list(HELD_OUT)}; cheap run: shortlist {args.shortlist}, "
            f"{args.windows} step windows. Total {time.perf_counter() - t_all:.0f} s.", "",
            "Cost and rank agreement. `cost ratio` = units (pipeline generations) of the cheap run / of the "
            "exhaustive run; seconds are wall time on this machine. Spearman is against the exhaustive "
            "reference on every (layer, format): `local` ranks by the local tier's rel_mse, `cheap` by the "
            "cheap run's per-metric costs (measured where shortlisted, else calibrated from the local tier).", "",
            "| model | layers | exhaustive units (s) | cheap units (s) | cost ratio | local profile s | "
            + " | ".join(f"rho {m} local / cheap" for m in ("ssim", "condition", "psnr", "frechet")) + " |",
            "|---|---|---|---|---|---|" + "---|" * 4]
    for r in results:
        body.append(f"| {r['model']} | {r['layers']} | {r['exhaustive_units']} ({r['t_ref']:.0f}) | {r['cheap_units']} "
                    f"({r['t_cheap']:.0f}) | {r['cost_ratio']:.3f} (time {r['t_cheap'] / r['t_ref']:.3f}) | "
                    f"{r['t_local']:.0f} | "
                    + " | ".join(f"{r['rho_local'][m]:+.2f} / {r['rho_cheap'][m]:+.2f}"
                                 for m in ("ssim", "condition", "psnr", "frechet")) + " |")
    body += ["", "Plans at the same budget (bytes <= budget), scored against full precision on the held-out seed "
             "(`condition` = mean classifier probability of the requested digit, full precision's own in the "
             "header; `combined` = the decoupled objective's damage, each metric normalized over the rows, lower "
             "is better):", ""]
    for r in results:
        fpc = r["fp_held"]
        body += [f"**{r['model']}**, budget {r['budget']:,} B (full-precision condition {fpc['condition']:.3f}, "
                 f"class agreement {fpc.get('class_agreement', float('nan')):.2f})", "",
                 "| plan | bytes | SSIM | condition | class agreement | PSNR dB | Frechet | combined |",
                 "|---|---|---|---|---|---|---|---|"]
        for name, s in r["held"].items():
            body.append(f"| {name} | {r['bytes'][name]:,} | {s['ssim']:.4f} | {s['condition']:.3f} | "
                        f"{s.get('class_agreement', float('nan')):.2f} | {s['psnr']:.2f} | {s['frechet']:.3f} | "
                        f"{r['comb'][name]:.3f} |")
        body.append("")
    text = "\n".join(body)
    print(text)
    if not args.no_doc:
        write_section("e2e", "End-to-end tier: cheap vs exhaustive, decoupled vs local vs MixDQ-style", text,
                      "python scripts/bench_e2e.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
