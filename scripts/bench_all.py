"""One benchmark suite: every allocation method and every cache method, side by side, on both default models.

For each default model (the DiT and the UNet): one local profile (the default ProfileConfig) that every
profile-based method shares; then, at the three byte budgets of `mpsearch demo` (uniform NVFP4's bytes,
uniform INT4's bytes, halfway between uniform INT8 and INT4), the plans of

- uniform INT8 / NVFP4 / INT4 (at their own bytes);
- MixDQ-style (name/role groups, two ILPs, budget split chosen with generations on a search seed);
- AutoQuantize-style (one absolute output-error score per layer, NVFP4/INT4 costed at 4.0 bits per element
  as ModelOpt counts them, so its real bytes can exceed the budget);
- HAWQ-style (Hutchinson trace of each layer's Gauss-Newton Hessian block x the weight's quantization error);
- greedy and random allocations of mpsearch's own costs;
- mpsearch: local (ILP on the local tier's default `gn` metric, and on the former default `rel_mse`), decoupled (ILP on the cheap end-to-end tier's content + quality
  costs), Optuna-refined (NSGA-II from the ILP's answers, real generations on a search seed);

and, without quantization, every cache scheduler at the same numbers of full computations K. Every plan is
scored on held-out seeds against full precision: MSE, SSIM, class agreement, Frechet distance of classifier
features, real bytes (measured on the model), what finding it cost (measurement and solving seconds) and its
generation time as a ratio to full precision measured in the same process. No method uses role pins (the
uniform formats do not either). Writes the `bench_all` section of docs/benchmarks.md and
docs/img/bench_all.png.

    python scripts/bench_all.py [--models default,default-unet] [--seeds 1000,1001,1002] [--trials 30]
                                [--ks 6,10] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mpsearch  # noqa: E402
from mpsearch import baselines  # noqa: E402
from mpsearch import endtoend as e2e  # noqa: E402
from mpsearch.budget import format_bytes  # noqa: E402
from mpsearch.allocation.cache_scheduler import make_schedule  # noqa: E402
from mpsearch.cache_units import get_unit  # noqa: E402
from mpsearch.allocation.joint import cache_section  # noqa: E402
from mpsearch.profiling.cache_costs import costs_from_profile, measure_costs  # noqa: E402
from mpsearch.cache_units import compute_shares  # noqa: E402
from mpsearch.classifier import load_classifier  # noqa: E402
from mpsearch.demo import comparison_budgets  # noqa: E402
from mpsearch.evaluate import evaluate_plan  # noqa: E402
from mpsearch.runtime.generation import generate_many  # noqa: E402
from mpsearch.models import describe, get_denoiser  # noqa: E402
from mpsearch.plan import Plan  # noqa: E402
from mpsearch.profiling.store import Profile  # noqa: E402
from mpsearch.workflow import ProfileConfig, profile  # noqa: E402
from mpsearch.allocation.refine import refine  # noqa: E402
from mpsearch.allocation.solving import build_problem, solve  # noqa: E402
from mpsearch.allocation.solvers import get_solver  # noqa: E402

WARMUP = 2
SPLITS = (0.2, 0.35, 0.5, 0.65, 0.8)
METHODS = ("MixDQ-style", "AutoQuantize-style", "HAWQ-style", "greedy", "random", "mpsearch local (rel_mse)",
           "mpsearch local", "mpsearch decoupled", "mpsearch Optuna-refined")
IMG = Path(__file__).resolve().parent.parent / "docs" / "img" / "bench_all.png"


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _plan(info, problem, sol, name):
    return Plan.from_assignment(info, sol.assignment(problem), provenance={"solver": name})


def allocation_plans(pipe, prof, e2e_prof, traces, budget, args):
    """{method: (plan, solve seconds)} at one byte budget."""
    info = prof.info
    out = {}
    local = build_problem(prof, budget, role_pins={})
    mix, t_mix = _timed(baselines.mixdq_plans, prof, budget, SPLITS)
    (split, _), t_choose = _timed(baselines.choose_split, pipe, mix, labels=args.labels, steps=args.search_steps)
    out["MixDQ-style"] = (mix[split], t_mix + t_choose, f"split {split}")
    aq = baselines.autoquantize_problem(prof, budget)
    sol = get_solver("ilp").solve(aq)
    out["AutoQuantize-style"] = (_plan(info, aq, sol, "autoquantize"), sol.seconds, "")
    hq = baselines.hawq_problem(prof, pipe, traces, budget)
    sol = get_solver("ilp").solve(hq)
    out["HAWQ-style"] = (_plan(info, hq, sol, "hawq"), sol.seconds, "")
    for name in ("greedy", "random"):
        sol = get_solver(name).solve(local)
        out[name] = (_plan(info, local, sol, name), sol.seconds, "")
    plan = solve(prof, f"{budget}B", role_pins={}, metric="rel_mse")
    out["mpsearch local (rel_mse)"] = (plan, plan.provenance["seconds"], "")
    plan = solve(prof, f"{budget}B", role_pins={})
    out["mpsearch local"] = (plan, plan.provenance["seconds"], plan.provenance["metric"])
    plan = solve(e2e_prof, f"{budget}B", role_pins={}, objective_weights="content=1,quality=1")
    out["mpsearch decoupled"] = (plan, plan.provenance["seconds"], "")
    (plan, report), t = _timed(refine, prof, pipe, f"{budget}B", trials=args.trials, role_pins={}, labels=args.labels,
                               steps=args.search_steps)
    chosen, check = report.get("chosen") or {}, report.get("validation") or {}
    verdict = {"search": ", kept after validation", "ilp": ", failed validation: the ILP's plan"}.get(check.get("kept"), "")
    out["mpsearch Optuna-refined"] = (plan, t, f"{report.get('trials', 0)} trials, chose "
                                              f"{chosen.get('source', 'the ILP')}{verdict}")
    return out


def cache_rows(pipe, prof, args, score):
    """Every cache scheduler at each K (no quantization): (rows, measuring seconds)."""
    den = get_denoiser(pipe)
    unit = get_unit(den)
    share = compute_shares(den, [unit])[unit.name]
    cost, t_measure = _timed(measure_costs, pipe, unit, args.steps, warmup=WARMUP)
    free = costs_from_profile(prof, unit)
    fp = Plan.uniform(pipe, "fp")
    rows = []
    for k in args.ks:
        for method, c, source in (("dp", cost, "measured"), ("uniform", cost, "measured"),
                                  ("threshold", cost, "measured"), ("dp", free, "profile")):
            sched = make_schedule(method, c, k, warmup=WARMUP)
            plan = Plan.from_dict({**fp.to_dict(), "cache": cache_section(unit, sched, warmup=WARMUP, max_reuse=None,
                                                                         share=share, costs="measured")})
            s = score(plan)
            rows.append({"k": k, "method": f"{method} ({source} costs)", "scores": s,
                         "pattern": "".join("C" if x else "." for x in sched.compute)})
            print(f"  cache K={k} {rows[-1]['method']}: mse {s['mse']:.3g}", flush=True)
    return rows, t_measure, unit, share


def run_model(model, args, tmp: Path) -> dict:
    pipe = mpsearch.load_pipeline(model)
    info = describe(pipe)
    clf = load_classifier()
    config = ProfileConfig(labels=args.labels, steps=args.steps) if args.quick else ProfileConfig()
    generate_many(pipe, args.labels[:2], (0,), 2)  # warm-up
    _, t_gen = _timed(generate_many, pipe, config.labels, config.seeds, config.steps)
    prof, t_prof = _timed(profile, pipe, config, out=tmp / f"{model}.sqlite", progress=False)
    shutil.copy(prof.path, tmp / f"{model}-e2e.sqlite")
    e2e_prof = Profile.load(tmp / f"{model}-e2e.sqlite")
    _, t_e2e = _timed(e2e.run_end_to_end, pipe, e2e_prof, shortlist_n=8, windows=2, role_pins={})
    e2e_prof = Profile.load(e2e_prof.path)
    traces, t_hawq = _timed(baselines.hawq_traces, pipe, info, labels=args.labels, steps=args.steps, every=5,
                                   samples=2)
    print(f"{model}: fp generation {t_gen:.1f} s, profile {t_prof:.1f} s, end-to-end {t_e2e:.1f} s, "
          f"HAWQ traces {t_hawq:.1f} s", flush=True)
    reference = generate_many(pipe, args.labels, args.seeds, args.steps)
    fp_seconds, scored = [], []

    def score(plan):
        kw = dict(labels=args.labels, seeds=args.seeds, steps=args.steps, reference=reference)
        s = evaluate_plan(pipe, plan, classifier=clf, **kw)
        fp_seconds.append(evaluate_plan(pipe, None, **kw)["seconds"])  # a full-precision run right beside it
        scored.append(s)
        return s

    uniform = {f: score(Plan.uniform(pipe, f)) for f in ("int8", "nvfp4", "int4")}
    measure_cost = {"MixDQ-style": t_prof, "AutoQuantize-style": t_prof, "HAWQ-style": t_hawq, "greedy": t_prof,
                    "random": 0.0, "mpsearch local (rel_mse)": t_prof, "mpsearch local": t_prof, "mpsearch decoupled": t_prof + t_e2e,
                    "mpsearch Optuna-refined": t_prof}
    budgets = {}
    for bname, nbytes in comparison_budgets(info).items():
        plans = allocation_plans(pipe, prof, e2e_prof, traces, nbytes, args)
        rows = {}
        for method in METHODS:
            plan, t_solve, note = plans[method]
            rows[method] = {"scores": score(plan), "solve": t_solve, "measure": measure_cost[method], "note": note,
                            "counts": plan.format_counts()}
            s = rows[method]["scores"]
            print(f"  {bname} {method}: bytes {s['bytes']:,} / {nbytes:,}, mse {s['mse']:.3g}, ssim {s['ssim']:.4f}",
                  flush=True)
        budgets[bname] = {"bytes": nbytes, "rows": rows}
    cache, t_cache, unit, share = cache_rows(pipe, prof, args, score)
    for s in scored:  # against the median of the full-precision runs made beside the plans (steadier than one)
        s["time_ratio"] = s["seconds"] / float(np.median(fp_seconds))
    return {"model": model, "layers": len(info.layers), "fp_bytes": info.fp_bytes, "t_gen": t_gen,
            "t_prof": t_prof, "t_e2e": t_e2e, "t_hawq": t_hawq, "uniform": uniform, "budgets": budgets,
            "cache": cache, "t_cache": t_cache, "unit": unit.name, "share": share,
            "fp_seconds": float(np.median(fp_seconds))}


def _fmt(s: dict, key: str, spec: str) -> str:
    v = s.get(key)
    return "n/a" if v is None else format(v, spec)


def render(results, args, seconds) -> str:
    lines = [
        f"Held-out seeds {list(args.seeds)} x labels {list(args.labels)}, {args.steps} DDIM steps, scored against full precision: MSE and "
        "SSIM of the images, class agreement (the default classifier recognizes the requested digit), Frechet "
        "distance of the classifier's features (lower is better). `bytes` are measured on the model with the plan "
        "applied; `budget` is the byte budget every method was given (AutoQuantize-style counts 4-bit formats at "
        "4.0 bits per element, so its real bytes can exceed it: marked **over**). `measure s` = the measurement "
        "the method needs (the shared local profile; the end-to-end tier for decoupled; Hessian traces for HAWQ); "
        "`solve s` = solving, including the generations that MixDQ's split choice and Optuna's trials make. "
        f"`time` = generation wall time / the median of full precision's, one full-precision run made right after each plan's (CPU: W8A8 through "
        f"`torch._int_mm`, NVFP4 emulated, INT4 dequantized on the fly). Optuna: {args.trials} trials per budget "
        f"on search seed 500 ({args.search_steps} steps). Whole run: "
        f"{seconds / 60:.1f} min.", ""]
    from scipy.stats import rankdata

    others = [m for m in METHODS if m != "mpsearch local"]
    versus = {m: np.zeros((2, 3), dtype=int) for m in others}  # (MSE, SSIM) x (local better, equal, worse)
    ranks = {m: [] for m in METHODS}
    gn_gain = []
    for r in results:
        lines += [f"### {r['model']} ({r['layers']} layers, full precision {format_bytes(r['fp_bytes'])})", "",
                  f"Cost: one full-precision generation of the profile's conditions {r['t_gen']:.1f} s; local profile "
                  f"{r['t_prof']:.1f} s ({r['t_prof'] / r['t_gen']:.1f}x); cheap end-to-end tier {r['t_e2e']:.1f} s; "
                  f"HAWQ traces {r['t_hawq']:.1f} s. Full-precision generation of the held-out set: "
                  f"{r['fp_seconds']:.2f} s.", "",
                  "| budget | method | bytes | MSE | SSIM | class agr. | Frechet | measure s | solve s | time | formats |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for f, s in r["uniform"].items():
            lines.append(f"| - | uniform {f} | {s['bytes']:,} | {s['mse']:.2e} | {s['ssim']:.4f} | "
                         f"{_fmt(s, 'class_agreement', '.2f')} | {_fmt(s, 'frechet', '.3f')} | 0 | 0 | "
                         f"{s['time_ratio']:.2f} | {f} |")
        for bname, b in r["budgets"].items():
            rows = b["rows"]
            mses = np.array([rows[m]["scores"]["mse"] for m in METHODS])
            for m, rank in zip(METHODS, rankdata(mses, method="average")):  # ties share their mean rank
                ranks[m].append(rank)
            loc = rows["mpsearch local"]["scores"]
            for m in others:
                for i, (key, sign) in enumerate((("mse", 1), ("ssim", -1))):
                    d = sign * (rows[m]["scores"][key] - loc[key])
                    versus[m][i, 0 if d > 0 else (1 if d == 0 else 2)] += 1
            gn_gain.append(rows["mpsearch local (rel_mse)"]["scores"]["mse"] / loc["mse"])
            for m in METHODS:
                s, row = rows[m]["scores"], rows[m]
                over = " **over**" if s["bytes"] > b["bytes"] else ""
                name = f"**{m}**" if s["mse"] == mses.min() else m
                counts = ", ".join(f"{k} {v}" for k, v in sorted(row["counts"].items()))
                note = f" ({row['note']})" if row["note"] else ""
                lines.append(f"| {bname} ({format_bytes(b['bytes'])}) | {name}{note} | {s['bytes']:,}{over} | "
                             f"{s['mse']:.2e} | {s['ssim']:.4f} | {_fmt(s, 'class_agreement', '.2f')} | "
                             f"{_fmt(s, 'frechet', '.3f')} | {row['measure']:.1f} | {row['solve']:.2f} | "
                             f"{s['time_ratio']:.2f} | {counts} |")
        lines += ["", f"Cache schedulers (no quantization), unit `{r['unit']}` ({r['share']:.0%} of a step's FLOPs); "
                  f"measuring the reuse costs took {r['t_cache']:.0f} s (`profile costs`: the bound from the profile's "
                  "block changes, free):", "",
                  f"| K of {args.steps} | method | MSE | SSIM | class agr. | Frechet | time | schedule |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for c in r["cache"]:
            s = c["scores"]
            lines.append(f"| {c['k']} | {c['method']} | {s['mse']:.2e} | {s['ssim']:.4f} | "
                         f"{_fmt(s, 'class_agreement', '.2f')} | {_fmt(s, 'frechet', '.3f')} | {s['time_ratio']:.2f} | "
                         f"`{c['pattern']}` |")
        lines.append("")
    cells = len(results) * 3
    lines += ["### Summary", "",
              f"Mean rank by MSE over the {cells} (model, budget) cells (1 = lowest error of the {len(METHODS)} "
              "methods; equal errors share their mean rank): " + "; ".join(
                  f"{m} {np.mean(ranks[m]):.2f}" for m in sorted(METHODS, key=lambda m: np.mean(ranks[m]))) + ".", "",
              f"The `gn` objective (the default) against the former `rel_mse` one, same ILP and bytes: held-out MSE "
              f"{np.exp(np.mean(np.log(gn_gain))):.1f}x lower in geometric mean over the cells (from "
              f"{min(gn_gain):.1f}x to {max(gn_gain):.1f}x).", "",
              "mpsearch local (gn) against each method over the cells: where its held-out MSE (SSIM) is better / "
              "equal (mostly the same plan) / worse:", "",
              "| method | MSE better / equal / worse | SSIM better / equal / worse |", "| --- | ---: | ---: |"]
    lines += [f"| {m} | {' / '.join(map(str, v[0]))} | {' / '.join(map(str, v[1]))} |" for m, v in versus.items()]
    lines += ["", f"![every method at every budget](img/{IMG.name})"]
    return "\n".join(lines)


def plot(results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    markers = dict(zip(METHODS, "os^vxdDP*"))
    for ax, r in zip(axes[0], results):
        for f, s in r["uniform"].items():
            ax.scatter(s["bytes"], s["mse"], marker="*", s=160, c="k")
            ax.annotate(f"uniform {f}", (s["bytes"], s["mse"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        for m in METHODS:
            pts = sorted((b["rows"][m]["scores"]["bytes"], b["rows"][m]["scores"]["mse"]) for b in r["budgets"].values())
            xs, ys = [x for x, _ in pts], [y for _, y in pts]
            ax.plot(xs, ys, marker=markers[m], linestyle="-" if m.startswith("mpsearch") else ":", label=m)
        for b in r["budgets"].values():
            ax.axvline(b["bytes"], color="0.85", linewidth=0.8, zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel("real bytes of the denoiser")
        ax.set_ylabel("MSE vs full precision (held-out seeds)")
        ax.set_title(r["model"])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    IMG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,default-unet")
    ap.add_argument("--seeds", default="1000,1001,1002")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--ks", default="6,10")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--save-results", metavar="JSON", help="also keep every measured figure in this file")
    ap.add_argument("--from-results", metavar="JSON", help="render the section and plot from a saved run")
    ap.add_argument("--quick", action="store_true", help="a smoke run in about a minute (3 labels, 4 steps, 1 seed, "
                    "2 trials, K=3; implies --no-doc): checks that the suite runs, measures nothing worth keeping")
    args = ap.parse_args(argv)
    args.labels, args.steps, args.search_steps = tuple(range(10)), 20, 8
    if args.quick:
        args.labels, args.steps, args.search_steps, args.no_doc = (0, 1, 2), 4, 2, True
        args.seeds, args.trials, args.ks = "1000", min(args.trials, 2), "3"
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    args.ks = [int(k) for k in args.ks.split(",")]
    t0 = time.perf_counter()
    command = "python scripts/bench_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_results:  # render again from a saved run (no measuring)
        saved = json.loads(Path(args.from_results).read_text())
        results, seconds = saved["results"], saved["seconds"]
        command = (saved.get("command", "python scripts/bench_all.py --save-results FILE")
                   + "`; figures re-rendered from its saved results with `python scripts/bench_all.py --from-results "
                   + args.from_results)
        for k in ("labels", "seeds", "steps", "search_steps", "trials", "ks"):
            setattr(args, k, saved["args"][k])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = [run_model(m, args, Path(tmp)) for m in args.models.split(",")]
        seconds = time.perf_counter() - t0
        if args.save_results:
            keep = {k: getattr(args, k) for k in ("labels", "seeds", "steps", "search_steps", "trials", "ks")}
            Path(args.save_results).write_text(json.dumps({"results": results, "seconds": seconds, "args": keep,
                                                           "command": command},
                                                          default=float, indent=1))
    body = render(results, args, seconds)
    print(body)
    if not args.no_doc:
        from benchdoc import write_section

        plot(results)
        write_section("bench_all", "Every method side by side (the evidence suite)", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
