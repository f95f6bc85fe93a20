"""Evidence for the calibrated quantizer variants: mpsearch choosing (format, variant) per layer against
mpsearch with round-to-nearest only and against every rival of the evidence suite, at equal bytes, on test seeds.

For each default model (the DiT and the UNet), with the evidence suite's profile configuration (labels 0-9,
profile seeds 0 and 1, 20 steps):

- one profile with every variant (`mpsearch.profile(..., variants="all")`: the calibration pass, then
  int8/nvfp4/int4 and their clip/smooth/gptq/awq/smooth-gptq variants) and, timed side by side, the same
  profile without variants (`variants="none"`): the variants' extra profiling cost;
- at each of the evidence suite's byte budgets (the same bytes as `bench_all`): the plans of mpsearch with
  variants (the ILP over (format, variant)), mpsearch RTN only (the same profile restricted to the plain formats,
  `Profile.select_formats`), and greedy given the same variants (so the table shows how much of the gain is the
  variants and how much the search); and AutoQuantize with ModelOpt's calibrated recipes (AWQ-lite for NVFP4
  and INT4 on Linear layers, `mpsearch.allocation.autoquantize`, `recipes=True`) scored on the same calls as the
  stored AutoQuantize, at the stated budget and refitted to it;
- every plan scored on the test seeds (10 seeds x 10 labels = 100 images per cell) against full precision;
  mpsearch with variants against each by a paired per-image Wilcoxon test (Holm over the whole family) and a
  bootstrap interval of the mean-MSE ratio: better / worse only when both say so, else a tie;
- plans run on the CPU kernels' bit-exact paths (``--kernels nvfp4=float``): NVFP4's ``auto`` path is chosen per
  process by timing and may be bfloat16, whose images differ from the float32 path's;
- the rivals (MixDQ-style, AutoQuantize, HAWQ-style, greedy, random, and mpsearch's own other modes) are the
  evidence suite's runs as stored in docs/bench_all.json (per-image MSE on the same test images; rivals run as
  their authors run them, round-to-nearest); the script re-scores mpsearch RTN-only and says whether it
  reproduces the stored `mpsearch local` images' errors, which makes the stored rivals comparable.

Writes the `bench_variants` section of docs/benchmarks.md, docs/bench_variants.json and
docs/img/bench_variants.png (which variant the ILP chose for each layer at each budget).

    python scripts/bench_variants.py                         # both models (about 1.5 hours on 2 CPUs)
    python scripts/bench_variants.py --models default --no-doc --save-results /tmp/v_dit.json
    python scripts/bench_variants.py --from-results /tmp/v_dit.json,/tmp/v_unet.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mpsearch  # noqa: E402
from mpsearch.allocation.autoquantize import autoquantize_select  # noqa: E402
from mpsearch.allocation.objective import build_problem  # noqa: E402
from mpsearch.allocation.solvers import get_solver  # noqa: E402
from mpsearch.allocation.solving import solve  # noqa: E402
from mpsearch.apps.evaluate import evaluate_plan  # noqa: E402
from mpsearch.apps.profile import ProfileConfig, profile  # noqa: E402
from mpsearch.apps.report.significance import compare, verdicts  # noqa: E402
from mpsearch.budget import format_bytes  # noqa: E402
from mpsearch.classifier import load_classifier  # noqa: E402
from mpsearch.formats.variant import split_candidate  # noqa: E402
from mpsearch.plan import Plan  # noqa: E402
from mpsearch.runtime.generation import generate_many  # noqa: E402
from mpsearch.runtime.kernels import select_kernels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "docs" / "bench_all.json"
RESULTS = ROOT / "docs" / "bench_variants.json"
IMG = ROOT / "docs" / "img" / "bench_variants.png"
OURS = "mpsearch (variants)"
RTN = "mpsearch, RTN only"
GREEDY_V = "greedy (variants)"
#: AutoQuantize with ModelOpt's calibrated recipes (AWQ-lite for NVFP4 and INT4 on Linear layers), run here on
#: the variants' profile (its calibration statistics), at the stated budget and refitted to it
AQ_RECIPES = ("AutoQuantize, ModelOpt recipes (stated budget)", "AutoQuantize, ModelOpt recipes (fit)")
FRESH = (RTN, GREEDY_V, *AQ_RECIPES)
#: the evidence suite's rows compared with (stored): the rivals, then mpsearch's own round-to-nearest modes
#: ("mpsearch local" is the RTN-only ILP as bench_all ran it)
EXTERNAL = ("MixDQ-style", "AutoQuantize (stated budget)", "AutoQuantize (fit)", "HAWQ-style", "greedy", "random")
OWN = ("mpsearch local (rel_mse)", "mpsearch local", "mpsearch decoupled", "mpsearch Optuna-refined")
RIVALS = EXTERNAL + OWN
#: every rival of another method (the stored ones and the recipes' AutoQuantize run here)
ALL_EXTERNAL = EXTERNAL + AQ_RECIPES
PLAIN = ("int8", "nvfp4", "int4")


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def recipe_rival(pipe, prof, rtn, config) -> tuple:
    """(scores, nominal, real bytes, fixed bytes, candidates per layer and slot) of AutoQuantize with ModelOpt's
    calibrated recipes on the variants' profile ``prof`` (``rtn``: its round-to-nearest selection)."""
    from mpsearch.allocation import baselines
    from mpsearch.allocation.autoquantize import recipe_candidates
    from mpsearch.models import get_denoiser

    info, formats = prof.info, rtn.formats
    named = dict(get_denoiser(pipe).named_modules())
    cands = recipe_candidates(info, formats, [named[layer.name] for layer in info.layers])
    scores = baselines.autoquantize_scores(pipe, info, formats, labels=config.labels, seeds=config.seeds,
                                           steps=config.steps, recipes=True, calibration=prof.calibration())
    nominal = baselines.nominal_bytes(info, formats)
    base = build_problem(prof, None, role_pins={})
    assert list(base.layer_names) == [layer.name for layer in info.layers]
    real = np.array([[base.nbytes[li, prof.formats.index(c)] for c in row] for li, row in enumerate(cands)])
    return scores, nominal, real, base.fixed_bytes, cands


def run_model(model: str, stored: dict, args, tmp: Path) -> dict:
    pipe = mpsearch.load_pipeline(model)
    clf = load_classifier()
    sargs = args.stored_args
    config = ProfileConfig(labels=tuple(sargs["labels"]), seeds=tuple(sargs["profile_seeds"]), steps=sargs["steps"])
    generate_many(pipe, config.labels[:2], (0,), 2)  # warm-up
    times = {}
    for i in range(args.repeats):  # alternating, so load on the machine hits both alike
        _, t = _timed(profile, pipe, config, out=tmp / f"{model}-rtn-{i}.sqlite", progress=False, variants="none")
        times.setdefault("rtn", []).append(t)
        prof, t = _timed(profile, pipe, config, out=tmp / f"{model}-var-{i}.sqlite", progress=False,
                         variants="all")
        times.setdefault("variants", []).append(t)
    t_rtn, t_var = float(np.median(times["rtn"])), float(np.median(times["variants"]))
    print(f"{model}: profile {t_rtn:.1f} s without variants, {t_var:.1f} s with ({t_var / t_rtn:.2f}x)", flush=True)
    rtn = prof.select_formats(PLAIN)
    (aq_scores, aq_nominal, aq_real, aq_fixed, aq_cands), t_aq = _timed(recipe_rival, pipe, prof, rtn, config)
    print(f"{model}: AutoQuantize with ModelOpt's recipes scored in {t_aq:.1f} s", flush=True)
    seeds = tuple(sargs["seeds"])
    reference = generate_many(pipe, config.labels, seeds, config.steps)

    def score(plan):
        return evaluate_plan(pipe, plan, classifier=clf, labels=config.labels, seeds=seeds, steps=config.steps,
                             reference=reference)

    budgets = {}
    for bname, b in stored["budgets"].items():
        if args.budgets and bname not in args.budgets:
            continue
        nbytes = int(b["bytes"])
        rows = {}
        plans = {OURS: solve(prof, f"{nbytes}B", role_pins={}), RTN: solve(rtn, f"{nbytes}B", role_pins={})}
        problem = build_problem(prof, nbytes, role_pins={})
        sol = get_solver("greedy").solve(problem)
        assignment = sol.assignment(problem)
        plans[GREEDY_V] = Plan.from_assignment(prof.info, assignment, weights=prof.weights,
                                               provenance={"solver": "greedy"},
                                               calibration=prof.calibration(list(assignment)))
        for method, fit in zip(AQ_RECIPES, (False, True), strict=True):
            r = autoquantize_select(aq_scores, aq_nominal, aq_real, aq_fixed, nbytes, fit=fit)
            chosen = {layer.name: aq_cands[li][int(c)] for li, (layer, c) in enumerate(zip(prof.info.layers,
                                                                                           r["choice"], strict=True))}
            plans[method] = Plan.from_assignment(prof.info, chosen, weights=prof.weights,
                                                 provenance={"solver": "autoquantize", "recipes": "modelopt"},
                                                 calibration=prof.calibration([n for n, c in chosen.items()
                                                                               if ":" in c]))
        for method, plan in plans.items():
            s = score(plan)
            rows[method] = {"scores": s, "counts": plan.format_counts(), "layers": dict(plan.layers)}
            print(f"  {model} {bname} {method}: bytes {s['bytes']:,} / {nbytes:,}, mse {s['mse']:.3g}", flush=True)
        for method in RIVALS:
            rows[method] = {"scores": b["rows"][method]["scores"], "counts": b["rows"][method]["counts"],
                            "stored": True}
        mine = np.asarray(rows[RTN]["scores"]["mse_per_image"])
        theirs = np.asarray(b["rows"]["mpsearch local"]["scores"]["mse_per_image"])
        rows[RTN]["reproduces_stored"] = float(np.max(np.abs(mine - theirs) / np.maximum(np.abs(theirs), 1e-30)))
        budgets[bname] = {"bytes": nbytes, "rows": rows}
    return {"model": model, "t_profile_rtn": t_rtn, "t_profile_variants": t_var, "profile_times": times,
            "t_autoquantize_recipes": t_aq,
            "layers": list(prof.info.names), "budgets": budgets}


def analyse(results: list[dict], alpha: float = 0.05) -> dict:
    family = []
    for r in results:
        for bname, b in r["budgets"].items():
            ours = b["rows"][OURS]["scores"]["mse_per_image"]
            for m in (*FRESH, *RIVALS):
                if m not in b["rows"]:
                    continue
                family.append(((r["model"], bname, m), compare(ours, b["rows"][m]["scores"]["mse_per_image"])))
    for (_key, c), v in zip(family, verdicts([c for _, c in family], alpha=alpha), strict=True):
        c["verdict"] = v
    return {key: c for key, c in family}


def _variant_of(fmt: str) -> str:
    return split_candidate(fmt)[1] or ("fp" if fmt == "fp" else "rtn")


def figure(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    kinds = ["fp", "rtn", "clip", "smooth", "gptq", "awq", "smooth-gptq"]
    colors = ["#dddddd", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.2 * len(results) + 0.6), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        names = r["layers"]
        grid = np.array([[kinds.index(_variant_of(b["rows"][OURS]["layers"][n])) for n in names]
                         for b in r["budgets"].values()])
        ax.imshow(grid, aspect="auto", cmap=ListedColormap(colors), vmin=-0.5, vmax=len(kinds) - 0.5,
                  interpolation="nearest")
        ax.set_yticks(range(len(r["budgets"])), [f"{k} ({format_bytes(b['bytes'])})" for k, b in r["budgets"].items()],
                      fontsize=7)
        ax.set_xticks([])
        ax.set_xlabel(f"{r['model']}: its {len(names)} candidate layers, in model order", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, ["fp", "round to nearest", *kinds[2:]], loc="upper center", ncol=len(kinds), fontsize=8,
               bbox_to_anchor=(0.5, 0.955))
    fig.suptitle("the quantizer the ILP chose for each layer at each budget (mpsearch with variants)", y=0.995,
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    IMG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG, dpi=110)


def render(results: list[dict], command: str) -> str:
    comp = analyse(results)
    by = {(r["model"], bn): b for r in results for bn, b in r["budgets"].items()}

    def rows_of(model, bname, method):
        return by[(model, bname)]["rows"][method]

    def bytes_of(model, bname):
        return by[(model, bname)]["bytes"]

    lines = []
    cells = [(r["model"], bname) for r in results for bname in r["budgets"]]
    half, never_worse, beat_all = 0, True, 0
    lines += ["| model | budget | mpsearch (variants) MSE | RTN only | ratio to RTN only (95% CI) | vs RTN only | "
              "vs greedy (variants) | rivals at equal bytes: better / tie / worse | vs mpsearch's other RTN modes | "
              "chosen variants |",
              "| --- | --- | ---: | ---: | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for bname, b in r["budgets"].items():
            rows = b["rows"]
            c_rtn = comp[(r["model"], bname, RTN)]
            c_gv = comp[(r["model"], bname, GREEDY_V)]
            # at equal bytes: a rival whose plan's real bytes exceed the budget (AutoQuantize at the stated
            # budget) is shown but not counted
            fair = [m for m in ALL_EXTERNAL if m in rows and rows[m]["scores"]["bytes"] <= b["bytes"]]
            vs = [comp[(r["model"], bname, m)]["verdict"] for m in fair]
            own = [comp[(r["model"], bname, m)]["verdict"] for m in OWN]
            if c_rtn["ratio"] <= 0.5:
                half += 1
            if "worse" in vs or "worse" in own or c_rtn["verdict"] == "worse":
                never_worse = False
            if all(v == "better" for v in vs):
                beat_all += 1
            counts = {}
            for fmt, n in rows[OURS]["counts"].items():
                if fmt != "fp":
                    counts[_variant_of(fmt)] = counts.get(_variant_of(fmt), 0) + n
            lines.append(
                f"| {r['model']} | {bname} ({format_bytes(b['bytes'])}) | {rows[OURS]['scores']['mse']:.3g} | "
                f"{rows[RTN]['scores']['mse']:.3g} | {c_rtn['ratio']:.2f} ({c_rtn['lo']:.2f}-{c_rtn['hi']:.2f}) | "
                f"**{c_rtn['verdict']}** | {c_gv['verdict']} (x{c_gv['ratio']:.2f}) | "
                f"{vs.count('better')} / {vs.count('tie')} / {vs.count('worse')} of {len(vs)} | "
                f"{own.count('better')} / {own.count('tie')} / {own.count('worse')} | "
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + " |")
    n = len(cells)
    lines += ["", f"Targets: mean MSE <= 0.5x RTN-only's in at least half the cells: **{half} of {n}**; never "
              "significantly worse than RTN-only or a rival at equal bytes: "
              f"**{'yes' if never_worse else 'no'}**; better than every rival (MixDQ-style, AutoQuantize with "
              "round-to-nearest and with ModelOpt's recipes, HAWQ-style, greedy, random) at equal bytes in at least "
              f"8 of 12 cells: **{beat_all} of {n}**. "
              "Greedy given the same variants is the search's share: where it "
              "ties, the gain is the variants'."]
    lines += ["", "Per rival (cells where mpsearch with variants is better / tie / worse):", "",
              "| rival | better | tie | worse | median ratio of mean MSE |", "| --- | ---: | ---: | ---: | ---: |"]
    for m in (*FRESH, *RIVALS):
        if any((mo, bn, m) not in comp for mo, bn in cells):
            continue  # results saved before this row existed
        vs = [comp[(mo, bn, m)] for mo, bn in cells]
        over = sum(rows_of(mo, bn, m)["scores"]["bytes"] > bytes_of(mo, bn) for mo, bn in cells)
        note = f" ({over} cells over budget)" if over else ""
        lines.append(f"| {m}{' (stored)' if m in RIVALS else ''}{note} | {sum(c['verdict'] == 'better' for c in vs)} | "
                     f"{sum(c['verdict'] == 'tie' for c in vs)} | {sum(c['verdict'] == 'worse' for c in vs)} | "
                     f"{float(np.median([c['ratio'] for c in vs])):.2f} |")
    lines += ["", "Profile cost (same configuration, alternating, median):", "",
              "| model | without variants | with variants | ratio |", "| --- | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['model']} | {r['t_profile_rtn']:.1f} s | {r['t_profile_variants']:.1f} s | "
                     f"{r['t_profile_variants'] / r['t_profile_rtn']:.2f}x |")
    repro = [b["rows"][RTN]["reproduces_stored"] for r in results for b in r["budgets"].values()]
    lines += ["", f"The stored rivals' images are comparable: mpsearch RTN-only re-scored here reproduces the stored "
              f"`mpsearch local` per-image errors to a relative {max(repro):.1e} at most (0 = bit for bit).",
              "", f"![chosen variants]({IMG.relative_to(ROOT / 'docs')})"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="default,default-unet")
    ap.add_argument("--budgets", default=None, help="comma-separated budget names of the evidence suite")
    ap.add_argument("--repeats", type=int, default=1, help="profile timings per model (alternating)")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--save-results", default=None)
    ap.add_argument("--from-results", default=None)
    ap.add_argument("--kernels", default="nvfp4=float",
                    help="MPSEARCH_KERNELS settings for the run (default: NVFP4 on its bit-exact float32 CPU path, as "
                    "the stored evidence ran it; 'auto' measures per process and may pick bfloat16)")
    args = ap.parse_args(argv)
    args.budgets = None if args.budgets is None else args.budgets.split(",")
    if args.kernels != "auto":
        select_kernels(args.kernels)
    command = "python scripts/bench_variants.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_results:
        results = [r for p in args.from_results.split(",") for r in json.loads(Path(p).read_text())["results"]]
    else:
        stored_all = json.loads(STORED.read_text())
        args.stored_args = stored_all["args"]
        if stored_all["args"].get("split") != "test":
            raise SystemExit("docs/bench_all.json is not the test-seed run; run bench_all first")
        by_model = {r["model"]: r for r in stored_all["results"]}
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for model in args.models.split(","):
                results.append(run_model(model, by_model[model], args, Path(tmp)))
        if args.save_results:
            Path(args.save_results).write_text(json.dumps({"results": results, "command": command}, default=float))
    if args.no_doc:
        print(render(results, command))
        return 0
    figure(results)
    RESULTS.write_text(json.dumps({"results": results, "command": command}, default=float))
    from benchdoc import write_section

    body = render(results, command)
    write_section("bench_variants", "Quantizer variants: (format, variant) per layer at equal bytes (test seeds)",
                  body, command)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
