"""The evidence suite: every allocation method and the cache schedulers, side by side, on both default models,
on test seeds nobody tunes on, with paired per-image significance.

For each default model (the DiT and the UNet):

- one local profile (the default ProfileConfig: labels 0-9, profile seeds 0 and 1, 20 steps) that every
  profile-based method shares, and each rival's own measurement on the same calls and seeds:
  AutoQuantize (ModelOpt's gradient score on the denoising loss, effective-bits costs, its PuLP 0/1 program;
  mpsearch.allocation.autoquantize), HAWQ-style (Hutchinson traces over the same 40 calls, one backward pass
  each, as many as mpsearch's `gn`), MixDQ-style (every layer x format quantized alone and generated, content
  and quality damage measured separately; two ILPs, budget split chosen on a search seed);
- byte budgets across the model's feasible range (mpsearch.apps.evidence.evidence_budgets: three between the
  smallest feasible plan and uniform NVFP4, uniform NVFP4, two between NVFP4 and INT8; none above INT8);
- at each budget the plans of MixDQ-style, AutoQuantize (at the stated budget, marked **over** where its real
  bytes exceed it, and re-run at the largest budget whose real bytes fit), HAWQ-style, greedy, random,
  mpsearch local (`gn`, the default, and `rel_mse`), decoupled (the cheap end-to-end tier), Optuna-refined;
- every plan scored on the test seeds (mpsearch.apps.evidence.TEST_SEEDS: 10 seeds x 10 labels = 100 images per cell)
  against full precision; mpsearch local against every other method by a paired per-image Wilcoxon test
  (Holm-corrected over all comparisons) and a bootstrap interval of the mean-MSE ratio: better / worse only
  when both say so, else a tie;
- the decoupled tier's rank agreement (Spearman) with the exhaustive per-layer measurement (MixDQ's), and
  local `gn`'s, with the tiers' costs;
- the DP cache schedule against the uniform interval at K = 6..12 of 20 steps, in fp and with INT8, costs
  measured on the profile seeds over all ten labels, scored on the test seeds with the same statistics.

Writes the `bench_all` section of docs/benchmarks.md, docs/img/bench_all.png and docs/bench_all.json.

    python scripts/bench_all.py                      # the final evidence run (test seeds)
    python scripts/bench_all.py --split dev --no-doc # development (dev seeds), docs untouched
    python scripts/bench_all.py --quick              # a one-minute smoke run (dev seed, few steps)
    # the same final run as two processes, one per model, rendered together (about half the wall time):
    python scripts/bench_all.py --models default --no-doc --save-results /tmp/dit.json &
    python scripts/bench_all.py --models default-unet --no-doc --save-results /tmp/unet.json; wait
    python scripts/bench_all.py --from-results /tmp/dit.json,/tmp/unet.json

A model's run can also be split across processes (``--budgets`` names some of its budgets, ``--no-cache``
leaves the cache rows to another part); ``--from-results`` merges the parts, e.g. for the UNet (about 30
minutes per budget on one core of this machine)::

    python scripts/bench_all.py --models default-unet --no-doc --measured /tmp/m --no-cache \
        --budgets 'min+25% to nvfp4,min+50% to nvfp4,min+75% to nvfp4' --save-results /tmp/u1.json
    python scripts/bench_all.py --models default-unet --no-doc --measured /tmp/m \
        --budgets '=nvfp4,nvfp4+33% to int8,nvfp4+67% to int8' --save-results /tmp/u2.json  # after u1 measured

With ``--measured DIR`` the first part keeps the profiles and the rivals' measurements in DIR and a later part
started after it reuses them (the same numbers: every measurement is seeded).
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
from mpsearch.allocation import baselines  # noqa: E402
from mpsearch.allocation import decoupled as e2e  # noqa: E402
from mpsearch.allocation.cache_scheduler import make_schedule  # noqa: E402
from mpsearch.allocation.decoupled.costs import e2e_costs  # noqa: E402
from mpsearch.allocation.joint import cache_section  # noqa: E402
from mpsearch.allocation.objective import build_problem  # noqa: E402
from mpsearch.allocation.refine import refine  # noqa: E402
from mpsearch.allocation.solvers import get_solver, min_feasible_bytes  # noqa: E402
from mpsearch.allocation.solving import solve  # noqa: E402
from mpsearch.apps.evaluate import evaluate_plan  # noqa: E402
from mpsearch.apps.evidence import BUDGET_NAMES, PROFILE_SEEDS, SEARCH_SEEDS, SPLITS, evidence_budgets  # noqa: E402
from mpsearch.apps.profile import ProfileConfig, profile  # noqa: E402
from mpsearch.apps.report.significance import compare, summary, verdicts  # noqa: E402
from mpsearch.budget import format_bytes  # noqa: E402
from mpsearch.cache_units import compute_shares, get_unit  # noqa: E402
from mpsearch.classifier import load_classifier  # noqa: E402
from mpsearch.models import describe, get_denoiser  # noqa: E402
from mpsearch.plan import Plan  # noqa: E402
from mpsearch.profiling.cache_costs import measure_costs  # noqa: E402
from mpsearch.profiling.store import Profile  # noqa: E402
from mpsearch.runtime.generation import generate_many  # noqa: E402

WARMUP = 2
SPLITS_MIXDQ = (0.2, 0.35, 0.5, 0.65, 0.8)
METHODS = ("MixDQ-style", "AutoQuantize (stated budget)", "AutoQuantize (fit)", "HAWQ-style", "greedy", "random",
           "mpsearch local (rel_mse)", "mpsearch local", "mpsearch decoupled", "mpsearch Optuna-refined")
OURS = "mpsearch local"
ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img" / "bench_all.png"
RESULTS = ROOT / "docs" / "bench_all.json"


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _plan(info, problem, sol, name):
    return Plan.from_assignment(info, sol.assignment(problem), provenance={"solver": name})


def allocation_plans(pipe, prof, e2e_prof, meas, budget, args):
    """{method: (plan, solve seconds, note)} at one byte budget."""
    info = prof.info
    out = {}
    local = build_problem(prof, budget, role_pins={})
    mix, t_mix = _timed(baselines.mixdq_measured_plans, prof, meas["mixdq"]["content"], meas["mixdq"]["quality"],
                        budget, SPLITS_MIXDQ)
    (split, _), t_choose = _timed(baselines.choose_split, pipe, mix, labels=args.labels, seeds=SEARCH_SEEDS[:1],
                                  steps=args.search_steps)
    out["MixDQ-style"] = (mix[split], t_mix + t_choose, f"split {split}")
    base = build_problem(prof, None, role_pins={})
    nominal = baselines.nominal_bytes(info, prof.formats)
    for name, fit in (("AutoQuantize (stated budget)", False), ("AutoQuantize (fit)", True)):
        r, t = _timed(baselines.autoquantize_select, meas["aq"], nominal, base.nbytes, base.fixed_bytes, budget,
                      fit=fit)
        plan = Plan.from_assignment(info,
                                    {n: prof.formats[c] for n, c in zip(base.layer_names, r["choice"], strict=True)},
                                    provenance={"solver": "autoquantize"})
        out[name] = (plan, t, f"{r['status']}, cap {format_bytes(int(r['cap']))} effective")
    hq = baselines.hawq_problem(prof, pipe, meas["hawq"], budget)
    sol = get_solver("cbc").solve(hq)
    out["HAWQ-style"] = (_plan(info, hq, sol, "hawq"), sol.seconds, "")
    for name in ("greedy", "random"):
        sol = get_solver(name).solve(local)
        out[name] = (_plan(info, local, sol, name), sol.seconds, "")
    plan = solve(prof, f"{budget}B", role_pins={}, metric="rel_mse")
    out["mpsearch local (rel_mse)"] = (plan, plan.provenance["seconds"], "")
    plan = solve(prof, f"{budget}B", role_pins={})
    out[OURS] = (plan, plan.provenance["seconds"], plan.provenance["metric"])
    plan = solve(e2e_prof, f"{budget}B", role_pins={}, objective_weights="content=1,quality=1")
    out["mpsearch decoupled"] = (plan, plan.provenance["seconds"], "")
    (plan, report), t = _timed(refine, prof, pipe, f"{budget}B", trials=args.trials, role_pins={}, labels=args.labels,
                               steps=args.search_steps)
    chosen, check = report.get("chosen") or {}, report.get("validation") or {}
    verdict = {"search": ", kept after validation",
               "ilp": ", failed validation: the ILP's plan"}.get(check.get("kept"), "")
    out["mpsearch Optuna-refined"] = (plan, t, f"{report.get('trials', 0)} trials, chose "
                                              f"{chosen.get('source', 'the ILP')}{verdict}")
    return out


def tier_agreement(prof, e2e_prof, mixdq, e2e_report) -> dict:
    """Spearman of local `gn` and of the decoupled tier's costs with the exhaustive per-layer measurement."""
    from scipy.stats import spearmanr

    local = build_problem(prof, None, role_pins={}).cost
    out = {"cost_ratio": e2e_report.get("cost_ratio"), "exhaustive_generations": mixdq["generations"],
           "self_spearman": e2e_report.get("spearman")}
    for kind, ref in (("content", mixdq["content"]), ("quality", mixdq["quality"])):
        dec, _ = e2e_costs(e2e_prof, f"{kind}=1,{'quality' if kind == 'content' else 'content'}=0")
        mask = np.isfinite(ref) & np.isfinite(local) & np.isfinite(dec)
        mask[:, 0] = False  # fp: zero everywhere
        out[kind] = {"n": int(mask.sum()),
                     "local_gn": float(spearmanr(local[mask], ref[mask]).statistic),
                     "decoupled": float(spearmanr(dec[mask], ref[mask]).statistic)}
    return out


def cache_rows(pipe, args, score):
    """DP against the uniform interval at each K, in fp and with INT8 (costs measured on the profile seeds)."""
    den = get_denoiser(pipe)
    unit = get_unit(den)
    share = compute_shares(den, [unit])[unit.name]
    rows, t_measure = [], 0.0
    for quant in ("fp", "int8"):
        base = Plan.uniform(pipe, quant)
        cost, t = _timed(measure_costs, pipe, unit, args.steps, plan=None if quant == "fp" else base,
                         labels=args.labels, seeds=args.profile_seeds, warmup=WARMUP)
        t_measure += t
        for k in args.ks:
            for method in ("dp", "uniform"):
                sched = make_schedule(method, cost, k, warmup=WARMUP)
                plan = Plan.from_dict({**base.to_dict(), "cache": cache_section(unit, sched, warmup=WARMUP,
                                                                                max_reuse=None, share=share,
                                                                                costs="measured")})
                s = score(plan)
                rows.append({"quant": quant, "k": k, "method": method, "scores": s,
                             "pattern": "".join("C" if x else "." for x in sched.compute)})
                print(f"  cache {quant} K={k} {method}: mse {s['mse']:.3g}", flush=True)
    return rows, t_measure, unit, share


def _save_measured(folder, model, tmp: Path, meas, timings) -> None:
    """Keep the profiles and the rivals' measurements, so the other parts of a split run skip them (numpy arrays
    and JSON only; the files are this script's own)."""
    out = Path(folder) / model
    out.mkdir(parents=True, exist_ok=True)
    for name in (f"{model}.sqlite", f"{model}-e2e.sqlite"):
        shutil.copy(tmp / name, out / (name + ".part"))
        (out / (name + ".part")).replace(out / name)
    np.savez(out / "arrays.npz", hawq=meas["hawq"], aq=meas["aq"], content=meas["mixdq"]["content"],
             quality=meas["mixdq"]["quality"])
    done = {**timings, "mixdq_generations": meas["mixdq"]["generations"]}
    (out / "timings.json.part").write_text(json.dumps(done, default=float))
    (out / "timings.json.part").replace(out / "timings.json")  # last: its presence marks the folder complete


def _load_measured(folder, model, tmp: Path):
    """(meas, timings) saved by an earlier part for this model, with its profiles copied into ``tmp``; None when
    that part has not finished measuring."""
    src = Path(folder) / model
    if not (src / "timings.json").exists():
        return None
    for name in (f"{model}.sqlite", f"{model}-e2e.sqlite"):
        shutil.copy(src / name, tmp / name)
    timings = json.loads((src / "timings.json").read_text())
    with np.load(src / "arrays.npz", allow_pickle=False) as z:
        meas = {"hawq": z["hawq"], "aq": z["aq"],
                "mixdq": {"content": z["content"], "quality": z["quality"],
                          "generations": timings["mixdq_generations"]}}
    return meas, timings


def run_model(model, args, tmp: Path) -> dict:
    pipe = mpsearch.load_pipeline(model)
    info = describe(pipe)
    clf = load_classifier()
    config = ProfileConfig(labels=args.labels, seeds=args.profile_seeds, steps=args.steps)
    generate_many(pipe, args.labels[:2], (0,), 2)  # warm-up
    _, t_gen = _timed(generate_many, pipe, config.labels, config.seeds, config.steps)
    saved = _load_measured(args.measured, model, tmp) if args.measured else None
    if saved is None:
        # round-to-nearest formats: the rivals run them as their authors do (variants: scripts/bench_variants.py)
        prof, t_prof = _timed(profile, pipe, config, out=tmp / f"{model}.sqlite", progress=False, variants="none")
        shutil.copy(prof.path, tmp / f"{model}-e2e.sqlite")
        e2e_prof = Profile.load(tmp / f"{model}-e2e.sqlite")
        e2e_report, t_e2e = _timed(e2e.run_end_to_end, pipe, e2e_prof, shortlist_n=8, windows=2, role_pins={})
        meas, t_meas = {}, {}
        meas["hawq"], t_meas["hawq"] = _timed(baselines.hawq_traces, pipe, info, labels=args.labels,
                                              seeds=config.seeds, steps=args.steps, every=1, samples=1)
        meas["aq"], t_meas["aq"] = _timed(baselines.autoquantize_scores, pipe, info, prof.formats,
                                          labels=args.labels, seeds=config.seeds, steps=args.steps)
        meas["mixdq"], t_meas["mixdq"] = _timed(baselines.mixdq_sensitivity, pipe, info, prof.formats,
                                                labels=args.labels, seeds=config.seeds[:1], steps=args.steps)
        if args.measured:
            _save_measured(args.measured, model, tmp, meas, {"t_prof": t_prof, "t_e2e": t_e2e, "t_meas": t_meas,
                                                             "e2e_report": e2e_report})
    else:
        meas, timings = saved
        t_prof, t_e2e, t_meas, e2e_report = (timings[k] for k in ("t_prof", "t_e2e", "t_meas", "e2e_report"))
        print(f"{model}: profiles and rivals' measurements from {args.measured} (measured by an earlier part)",
              flush=True)
    prof, e2e_prof = Profile.load(tmp / f"{model}.sqlite"), Profile.load(tmp / f"{model}-e2e.sqlite")
    agreement = tier_agreement(prof, e2e_prof, meas["mixdq"], e2e_report)
    agreement["t_e2e"], agreement["t_exhaustive"] = t_e2e, t_meas["mixdq"]
    print(f"{model}: fp generation {t_gen:.1f} s, profile {t_prof:.1f} s, end-to-end {t_e2e:.1f} s, "
          + ", ".join(f"{k} {v:.1f} s" for k, v in t_meas.items()), flush=True)
    reference = generate_many(pipe, args.labels, args.seeds, args.steps)
    fp_seconds = []

    def score(plan):
        kw = dict(labels=args.labels, seeds=args.seeds, steps=args.steps, reference=reference)
        return evaluate_plan(pipe, plan, classifier=clf, **kw)

    for _ in range(2):
        fp_seconds.append(score(None)["seconds"])
    uniform = {f: score(Plan.uniform(pipe, f)) for f in ("int8", "nvfp4", "int4")}
    measure_cost = {"MixDQ-style": t_meas["mixdq"], "AutoQuantize (stated budget)": t_meas["aq"],
                    "AutoQuantize (fit)": t_meas["aq"], "HAWQ-style": t_meas["hawq"], "greedy": t_prof, "random": 0.0,
                    "mpsearch local (rel_mse)": t_prof, OURS: t_prof, "mpsearch decoupled": t_prof + t_e2e,
                    "mpsearch Optuna-refined": t_prof}
    low = min_feasible_bytes(build_problem(prof, None, role_pins={}))
    budgets = {}
    every = evidence_budgets(info, low)
    wanted = list(every) if args.budgets is None else args.budgets
    unknown = [b for b in wanted if b not in every]
    if unknown:
        raise SystemExit(f"--budgets {','.join(unknown)}: {model} has the budgets {','.join(every)}")
    for bname, nbytes in ((b, every[b]) for b in wanted):
        plans = allocation_plans(pipe, prof, e2e_prof, meas, nbytes, args)
        rows = {}
        for method in METHODS:
            plan, t_solve, note = plans[method]
            rows[method] = {"scores": score(plan), "solve": t_solve, "measure": measure_cost[method], "note": note,
                            "counts": plan.format_counts()}
            s = rows[method]["scores"]
            print(f"  {bname} {method}: bytes {s['bytes']:,} / {nbytes:,}, mse {s['mse']:.3g}", flush=True)
        budgets[bname] = {"bytes": nbytes, "rows": rows}
    if args.no_cache:  # another part of a split run measures the cache rows
        unit = get_unit(get_denoiser(pipe))
        cache, t_cache, share = [], 0.0, compute_shares(get_denoiser(pipe), [unit])[unit.name]
    else:
        cache, t_cache, unit, share = cache_rows(pipe, args, score)
    fp_seconds.append(score(None)["seconds"])
    fp_s = float(np.median(fp_seconds))
    for s in [*uniform.values(), *(r["scores"] for b in budgets.values() for r in b["rows"].values()),
              *(c["scores"] for c in cache)]:
        s["time_ratio"] = s["seconds"] / fp_s
    return {"model": model, "layers": len(info.layers), "fp_bytes": info.fp_bytes, "t_gen": t_gen,
            "t_prof": t_prof, "t_e2e": t_e2e, "t_meas": t_meas, "uniform": uniform, "budgets": budgets,
            "min_bytes": int(low), "agreement": agreement, "cache": cache, "t_cache": t_cache, "unit": unit.name,
            "share": share, "fp_seconds": fp_s}


def analyse(results, alpha: float = 0.05) -> dict:
    """Paired comparisons (Holm over the whole family), verdicts, ranks."""
    from scipy.stats import rankdata

    family = []  # (kind, key, comparison)
    for r in results:
        for bname, b in r["budgets"].items():
            ours = b["rows"][OURS]["scores"]["mse_per_image"]
            for m in METHODS:
                if m != OURS:
                    family.append(("alloc", (r["model"], bname, m),
                                   compare(ours, b["rows"][m]["scores"]["mse_per_image"])))
        cells = {}
        for c in r["cache"]:
            cells.setdefault((c["quant"], c["k"]), {})[c["method"]] = c["scores"]["mse_per_image"]
        for (quant, k), d in cells.items():
            family.append(("cache", (r["model"], quant, k), compare(d["dp"], d["uniform"])))
    v = verdicts([c for _, _, c in family], alpha=alpha)
    out = {"alloc": {}, "cache": {}}
    for (kind, key, c), verdict in zip(family, v, strict=True):
        c["verdict"] = verdict
        out[kind][key] = c
    ranks = {m: {"mean": [], "median": [], "p90": []} for m in METHODS}
    for r in results:
        for b in r["budgets"].values():
            for stat in ("mean", "median", "p90"):
                vals = [summary(b["rows"][m]["scores"]["mse_per_image"])[stat] for m in METHODS]
                for m, rank in zip(METHODS, rankdata(vals, method="average"), strict=True):
                    ranks[m][stat].append(float(rank))
    out["ranks"] = ranks
    return out


def render(results, args, seconds) -> str:
    an = analyse(results)
    n_img = len(args.seeds) * len(args.labels)
    lines = [
        f"**Seeds** (mpsearch/apps/evidence.py): measurement on profile seeds {list(PROFILE_SEEDS)}; Optuna and "
        f"MixDQ's split on search seeds {list(SEARCH_SEEDS)}; scored on the **{args.split}** seeds "
        f"{list(args.seeds)} x labels {list(args.labels)} = {n_img} images per cell, {args.steps} DDIM steps, "
        "against full precision. Per-image MSE: mean, median, 90th percentile. `vs local`: mean-MSE ratio of the "
        "method to mpsearch local with its 95% paired bootstrap interval and the Holm-corrected two-sided "
        "Wilcoxon p over every comparison on this page; **better** / **worse** (for mpsearch local) only "
        "when p < 0.05 and the interval excludes 1, else **tie**. `bytes` are measured on the model with the "
        "plan applied; **over** = above the budget (AutoQuantize at the stated budget counts 4-bit formats at "
        "4.0 bits, as ModelOpt does; the fit row is its re-run at the largest cap whose real bytes fit). "
        "`measure s`: the method's own measurement; `solve s`: solving, with the generations of MixDQ's split "
        f"choice and Optuna's trials ({args.trials} trials, {args.search_steps} steps). `time`: generation time "
        f"/ full precision's (CPU; NVFP4 emulated). Whole run: {seconds / 60:.1f} min.", ""]
    counts = {m: [0, 0, 0] for m in METHODS if m != OURS}
    for r in results:
        ag = r["agreement"]
        lines += [f"### {r['model']} ({r['layers']} layers, full precision {format_bytes(r['fp_bytes'])})", "",
                  f"Measurement: one full-precision generation of the profile's conditions {r['t_gen']:.1f} s; "
                  f"local profile {r['t_prof']:.1f} s; cheap end-to-end tier {r['t_e2e']:.1f} s; AutoQuantize "
                  f"scores {r['t_meas']['aq']:.1f} s; HAWQ traces {r['t_meas']['hawq']:.1f} s; MixDQ's per-layer "
                  f"generations {r['t_meas']['mixdq']:.1f} s. Smallest feasible plan {r['min_bytes']:,} B.", "",
                  "| budget | method | bytes | MSE mean | median | p90 | SSIM | class agr. | "
                  "vs local (ratio [95% CI], p) "
                  "| measure s | solve s | time | formats |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
        for f, s in r["uniform"].items():
            lines.append(f"| - | uniform {f} | {s['bytes']:,} | {s['mse']:.2e} | {s['mse_median']:.2e} | "
                         f"{s['mse_p90']:.2e} | {s['ssim']:.4f} | {s.get('class_agreement', float('nan')):.2f} | "
                         "| 0 | 0 "
                         f"| {s['time_ratio']:.2f} | {f} |")
        for bname, b in r["budgets"].items():
            best = min(b["rows"][m]["scores"]["mse"] for m in METHODS)
            for m in METHODS:
                row, s = b["rows"][m], b["rows"][m]["scores"]
                over = " **over**" if s["bytes"] > b["bytes"] else ""
                if m == OURS:
                    vs = "-"
                else:
                    c = an["alloc"][(r["model"], bname, m)]
                    counts[m][{"better": 0, "tie": 1, "worse": 2}[c["verdict"]]] += 1
                    vs = (f"{1 / c['ratio']:.2f} [{1 / c['hi']:.2f}, {1 / c['lo']:.2f}], p {c['p_holm']:.2g}: "
                          f"local **{c['verdict']}**")
                name = f"**{m}**" if s["mse"] == best else m
                note = f" ({row['note']})" if row["note"] else ""
                fmts = ", ".join(f"{k} {v}" for k, v in sorted(row["counts"].items()))
                lines.append(f"| {bname} ({format_bytes(b['bytes'])}) | {name}{note} | {s['bytes']:,}{over} | "
                             f"{s['mse']:.2e} | {s['mse_median']:.2e} | {s['mse_p90']:.2e} | {s['ssim']:.4f} | "
                             f"{s.get('class_agreement', float('nan')):.2f} | {vs} | {row['measure']:.1f} | "
                             f"{row['solve']:.2f} | {s['time_ratio']:.2f} | {fmts} |")
        lines += ["", f"Decoupled tier against the exhaustive per-layer x format measurement (MixDQ's: "
                  f"{ag['exhaustive_generations']} generations, {ag['t_exhaustive']:.0f} s): cost ratio "
                  f"{ag['cost_ratio']} (its generations / the exhaustive run's; {ag['t_e2e']:.0f} s). Spearman over "
                  f"the measured (layer, format) pairs:", "",
                  "| metric | pairs | decoupled tier | local gn |", "| --- | ---: | ---: | ---: |"]
        for kind in ("content", "quality"):
            a = ag[kind]
            lines.append(f"| {kind} | {a['n']} | {a['decoupled']:.2f} | {a['local_gn']:.2f} |")
        if not r["cache"]:
            lines += ["", "Cache: DP against the uniform interval was not measured for this model in this run.", ""]
            continue
        lines += ["", f"Cache: DP against the uniform interval (unit `{r['unit']}`, {r['share']:.0%} of a step's "
                  f"FLOPs; reuse costs measured on the profile seeds x all labels in {r['t_cache']:.0f} s):", "",
                  f"| weights | K of {args.steps} | DP MSE mean / median / p90 | uniform MSE mean / median / p90 | "
                  "DP / uniform [95% CI], p | verdict (DP) | DP schedule |",
                  "| --- | ---: | --- | --- | --- | --- | --- |"]
        cells = {}
        for c in r["cache"]:
            cells.setdefault((c["quant"], c["k"]), {})[c["method"]] = c
        for (quant, k), d in cells.items():
            c = an["cache"][(r["model"], quant, k)]
            f = lambda s: f"{s['mse']:.2e} / {s['mse_median']:.2e} / {s['mse_p90']:.2e}"  # noqa: E731
            lines.append(f"| {quant} | {k} | {f(d['dp']['scores'])} | {f(d['uniform']['scores'])} | "
                         f"{c['ratio']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}], {c['p_holm']:.2g} | **{c['verdict']}** | "
                         f"`{d['dp']['pattern']}` |")
        lines.append("")
    ncell = sum(len(r["budgets"]) for r in results)
    ranks = an["ranks"]
    order = sorted(METHODS, key=lambda m: np.mean(ranks[m]["mean"]))
    lines += ["### Summary", "",
              f"Mean rank over the {ncell} (model, budget) cells (1 = lowest error of the {len(METHODS)} methods; "
              "equal values share their mean rank):", "",
              "| method | rank by mean MSE | by median MSE | by p90 MSE |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {m} | {np.mean(ranks[m]['mean']):.2f} | {np.mean(ranks[m]['median']):.2f} | "
              f"{np.mean(ranks[m]['p90']):.2f} |" for m in order]
    lines += ["", "mpsearch local (`gn`) against each method, per cell, with significance (Holm-corrected paired "
              "Wilcoxon + bootstrap interval of the mean-MSE ratio; a difference within noise is a tie). "
              "AutoQuantize at the stated budget is not at equal bytes where it is over:", "",
              "| method | local better / tie / worse |", "| --- | ---: |"]
    lines += [f"| {m} | {' / '.join(map(str, v))} |" for m, v in counts.items()]
    cv = {}
    for (model, quant, k), c in an["cache"].items():
        cv.setdefault((model, quant), []).append((k, c["verdict"]))
    if cv:
        lines += ["", "DP cache schedule against the uniform interval on these seeds (better / tie / worse over K): "
                  + "; ".join(f"{model} {quant}: {sum(v == 'better' for _, v in ks)} / "
                              f"{sum(v == 'tie' for _, v in ks)} / {sum(v == 'worse' for _, v in ks)}"
                              for (model, quant), ks in cv.items()) + "."]
    lines += ["", f"![every method at every budget](img/{IMG.name})"]
    return "\n".join(lines)


def plot(results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    markers = dict(zip(METHODS, "os^vxdDP*h", strict=True))
    for ax, r in zip(axes[0], results, strict=True):
        for f, s in r["uniform"].items():
            ax.scatter(s["bytes"], s["mse"], marker="*", s=160, c="k")
            ax.annotate(f"uniform {f}", (s["bytes"], s["mse"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        for m in METHODS:
            pts = sorted((b["rows"][m]["scores"]["bytes"], b["rows"][m]["scores"]["mse"])
                         for b in r["budgets"].values())
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker=markers[m],
                    linestyle="-" if m.startswith("mpsearch") else ":", label=m)
        for b in r["budgets"].values():
            ax.axvline(b["bytes"], color="0.85", linewidth=0.8, zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel("real bytes of the denoiser")
        ax.set_ylabel("mean image MSE vs full precision (test seeds)")
        ax.set_title(r["model"])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    IMG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG, dpi=100)


def merge_parts(results: list[dict]) -> list[dict]:
    """One result per model: the parts of a run split by ``--budgets`` / ``--no-cache`` merged (their budgets
    and cache rows; the rest from the first part, whose measurement phase each part repeats)."""
    merged: dict[str, dict] = {}
    for r in results:
        m = merged.get(r["model"])
        if m is None:
            merged[r["model"]] = {**r, "budgets": dict(r["budgets"]), "cache": list(r["cache"])}
            continue
        twice = set(m["budgets"]) & set(r["budgets"])
        if twice or (m["cache"] and r["cache"]):
            raise SystemExit(f"{r['model']}: two saved parts both measured "
                             f"{', '.join(sorted(twice)) or 'the cache rows'}; render each run on its own")
        m["budgets"].update(r["budgets"])
        if r["cache"]:
            m.update(cache=list(r["cache"]), t_cache=r["t_cache"])
    return list(merged.values())


KEEP = ("labels", "seeds", "steps", "search_steps", "trials", "ks", "split", "profile_seeds")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,default-unet")
    ap.add_argument("--split", choices=("test", "dev"), default="test",
                    help="which seeds score the plans (mpsearch/apps/evidence.py); only a test run writes the docs")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--ks", default="6,7,8,9,10,11,12")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--save-results", metavar="JSON", help=f"keep every measured figure here (default with docs: "
                    f"{RESULTS.relative_to(ROOT)})")
    ap.add_argument("--from-results", metavar="JSON", help="render the section and plot from saved runs "
                    "(comma-separated; parts of one model's run, split by --budgets / --no-cache, are merged)")
    ap.add_argument("--budgets", default=None, help="measure only these budgets (comma-separated names, e.g. "
                    "'min+25%% to nvfp4,=nvfp4'): one part of a run split across processes")
    ap.add_argument("--measured", metavar="DIR", help="keep the profiles and the rivals' measurements here, or reuse "
                    "them when an earlier part of a split run left them (saves the UNet's ~18 min of measuring)")
    ap.add_argument("--no-cache", action="store_true", help="leave the cache rows to another part of a split run")
    ap.add_argument("--quick", action="store_true", help="a smoke run (3 labels, 4 steps, 1 dev seed, 1 profile "
                    "seed, 2 trials, K=3; implies --split dev --no-doc): checks that the suite runs, measures nothing")
    args = ap.parse_args(argv)
    args.labels, args.steps, args.search_steps, args.profile_seeds = tuple(range(10)), 20, 8, PROFILE_SEEDS
    if args.quick:
        args.labels, args.steps, args.search_steps, args.no_doc, args.split = (0, 1, 2), 4, 2, True, "dev"
        args.trials, args.ks, args.profile_seeds = min(args.trials, 2), "3", PROFILE_SEEDS[:1]
    if args.split != "test":
        args.no_doc = True
    args.seeds = SPLITS[args.split][:1] if args.quick else SPLITS[args.split]
    args.ks = [int(k) for k in args.ks.split(",")]
    args.budgets = None if args.budgets is None else [b for b in args.budgets.split(",") if b]
    unknown = [b for b in args.budgets or () if b not in BUDGET_NAMES]
    if unknown:  # before anything is measured
        ap.error(f"--budgets {','.join(unknown)}: the budgets are named {','.join(BUDGET_NAMES)}")
    t0 = time.perf_counter()
    command = "python scripts/bench_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_results:  # one saved run, or several (e.g. one per model, run side by side) rendered as one
        saved = [json.loads(Path(f).read_text()) for f in args.from_results.split(",")]
        results = merge_parts([r for one in saved for r in one["results"]])
        seconds = max(one["seconds"] for one in saved)
        if any(one["args"] != saved[0]["args"] for one in saved):
            raise SystemExit("the saved runs were made with different settings; render them separately")
        command = " && ".join(one.get("command", "?") for one in saved) + f"`, rendered with `{command}"
        for k in KEEP:
            setattr(args, k, saved[0]["args"][k])
        args.no_doc = args.no_doc or args.split != "test"
        if not args.no_doc:
            RESULTS.write_text(json.dumps({"results": results, "seconds": seconds, "command": command,
                                           "args": saved[0]["args"]}, default=float))
    else:
        target = args.save_results or (None if args.no_doc else RESULTS)
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for m in args.models.split(","):
                results.append(run_model(m, args, Path(tmp)))
                seconds = time.perf_counter() - t0
                if target:  # after every model, so a run cut short keeps what it measured
                    Path(target).write_text(json.dumps({"results": results, "seconds": seconds, "command": command,
                                                        "args": {k: getattr(args, k) for k in KEEP}},
                                                       default=float))
    body = render(results, args, seconds)
    print(body)
    if not args.no_doc:
        from benchdoc import write_section

        plot(results)
        write_section("bench_all", "Every method side by side (the evidence suite, test seeds)", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
