"""What the profiler's approximations (``sample``: seeded channel x row subsets; ``replay_steps``: a subset of
steps replayed for the output sensitivity) change on the default models: Spearman of per-layer costs (gn,
summed over steps) between the exact and the approximate profile, and the plans solved at the demo's budgets
(same, or their held-out MSE beside each other). Profiles are kept under --dir and reused. Writes the
`scale-approx` section of docs/benchmarks.md.

    python scripts/bench_scale_approx.py --sample 64 --replay-steps 5

``--replay-rows R`` adds that approximation (a random R rows of each replayed call's batch, scaled up);
``--against-approx`` then compares against the profile with the other approximations only (``sample`` and
``replay_steps``), so the table shows what ``replay_rows`` alone changes (section `scale-approx-rows`).

``--auto`` checks every setting the automatic profile mode may choose (read from
``mpsearch.profiling.auto.checked_settings``, so the two cannot drift) against the exact profile, on the
``--models`` given: ``default``, ``default-unet`` and the tiny architectures as ``tiny-NAME``
(``mpsearch.apps.testing.TINY_BUILDERS``; text-to-image ones profiled on built-in calibration prompts, scored on
held-out ones, at ``--size``). It also checks that checkpointing changes no number, and writes the section
`auto-mode-decisions` and a JSON result (``--json``):

    python scripts/bench_scale_approx.py --auto --models default,default-unet,tiny-dit,tiny-pixart-sigma
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from benchdoc import write_section
from scipy.stats import spearmanr, wilcoxon

from mpsearch.allocation.solving import solve
from mpsearch.apps.demo import comparison_budgets
from mpsearch.apps.evaluate import HELD_OUT_SEEDS
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.apps.profile import ProfileConfig, profile
from mpsearch.errors import UsageError
from mpsearch.io import atomic_write_text
from mpsearch.models import describe
from mpsearch.profiling.auto import checked_settings
from mpsearch.prompts import DEFAULT_EVAL_PROMPTS, builtin_prompts
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate_many, takes_prompts

#: the bar a setting must clear on every model (docs/benchmarks.md, auto-mode-decisions)
MIN_SPEARMAN, MAX_P = 0.98, 0.05
#: the (cheap) setting whose profile is compared with and without every block checkpointed
CHECKPOINT_CHECK = {"sample": 64, "replay_batch": 1, "replay_steps": 1, "replay_rows": 1}
#: built-in calibration prompts a tiny text-to-image model is profiled on
TINY_PROMPTS = 2


def _per_image_mse(pipe, plan, reference, conditions=tuple(range(10)), steps=20, size=None) -> np.ndarray:
    """MSE against full precision of each held-out image generated with ``plan`` (conditions x held-out seeds)."""
    with apply_plan(pipe, plan):
        images = generate_many(pipe, conditions, HELD_OUT_SEEDS, steps, None, size)
    diff = np.asarray(images, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return (diff ** 2).reshape(len(diff), -1).mean(axis=1)


def _spearman(profs) -> tuple[float, dict[str, tuple[float, int]]]:
    """Spearman of per-(layer, format) gn costs summed over steps, over all formats and per format (not fp:
    (rho, layers))."""
    costs = {k: np.nansum(p.metric("gn"), axis=2) for k, p in profs.items()}  # (layers, formats)
    ok = np.isfinite(profs["exact"].metric("gn")[..., 0]) & (np.arange(costs["exact"].shape[1]) > 0)[None]
    rho_all = float(spearmanr(costs["exact"][ok], costs["approx"][ok]).statistic)
    per_fmt = {}
    for fi, f in enumerate(profs["exact"].formats):
        m = ok[:, fi]
        if fi and m.sum() > 2:
            per_fmt[f] = (float(spearmanr(costs["exact"][m, fi], costs["approx"][m, fi]).statistic), int(m.sum()))
    return rho_all, per_fmt


def _load(model: str, size: int | None):
    """(pipe, profile conditions, held-out conditions, size) for ``model`` (``tiny-NAME``: a tiny architecture)."""
    if model.startswith("tiny-"):
        from mpsearch.apps.testing import build_tiny_pipeline

        pipe = build_tiny_pipeline(model[len("tiny-"):])
    else:
        pipe = load_pipeline(model)
    if takes_prompts(pipe):
        return (pipe, {"prompts": builtin_prompts(TINY_PROMPTS, "calibration").prompts, "size": size},
                tuple(builtin_prompts(DEFAULT_EVAL_PROMPTS, "heldout").prompts), size)
    return pipe, {}, tuple(range(10)), None


def _plans(pipe, info, profs, scored: dict, conditions, steps, size) -> list[dict]:
    """Solve each profile at the demo's three budgets; where the plans differ, score both on held-out seeds
    (per-image MSE against full precision; ``scored`` caches them by plan) with a paired Wilcoxon test."""
    out = []
    for bname, nbytes in comparison_budgets(info).items():
        plans = {k: solve(p, nbytes, role_pins={}) for k, p in profs.items()}
        row = {"budget": bname, "layers": len(plans["exact"].layers),
               "differ": sum(plans["exact"].layers[k] != plans["approx"].layers.get(k) for k in plans["exact"].layers)}
        if row["differ"]:
            if "reference" not in scored:
                scored["reference"] = generate_many(pipe, conditions, HELD_OUT_SEEDS, steps, None, size)
            per = {}
            for k, plan in plans.items():
                key = tuple(sorted(plan.layers.items()))
                if key not in scored:
                    scored[key] = _per_image_mse(pipe, plan, scored["reference"], conditions, steps, size)
                per[k] = scored[key]
            p_value = float(wilcoxon(per["approx"], per["exact"]).pvalue) \
                if np.any(per["approx"] != per["exact"]) else 1.0
            row.update(mse_exact=float(per["exact"].mean()), mse_approx=float(per["approx"].mean()),
                       worse_images=int((per["approx"] > per["exact"]).sum()), images=len(per["exact"]),
                       p=p_value, significantly_worse=bool(p_value < MAX_P
                                                           and per["approx"].mean() > per["exact"].mean()))
        out.append(row)
    return out


def _plan_cell(r: dict) -> str:
    if not r["differ"]:
        return f"{r['budget']} same"
    return (f"{r['budget']} {r['differ']}/{r['layers']} differ: MSE {r['mse_exact']:.3g} / {r['mse_approx']:.3g}, "
            f"worse on {r['worse_images']}/{r['images']}, p = {r['p']:.2g}"
            + (" **worse**" if r["significantly_worse"] else ""))


def _label(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items() if v is not None) or "exact"


def _tag(setting: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(setting.items()) if v is not None) or "exact"


def _profile(pipe, model: str, base: dict, args, setting: dict, checkpointed: bool = False):
    """(profile, seconds) of ``model`` with ``base`` and ``setting`` (mode exact: the settings as given)."""
    path = Path(args.dir) / f"{model}-s{args.steps}-{_tag(setting)}{'-ck' if checkpointed else ''}.sqlite"
    if not args.reuse:
        path.unlink(missing_ok=True)  # measure the profile's time, not a resumed file's
    t0 = time.perf_counter()
    extra = {"replay_checkpoint": True} if checkpointed else {}
    p = profile(pipe, ProfileConfig(**base, **setting, **extra), out=path, progress=False, mode="exact")
    return p, time.perf_counter() - t0


def _setting(spec: str, checked: list[dict]) -> dict:
    """``--settings`` item: an index of ``checked_settings()``, or ``K:R`` (K replayed steps of R rows, ``all``
    for every row; sample 64 and micro-batch 1, as the auto mode's) for a setting off the list."""
    if ":" not in spec:
        return checked[int(spec)]
    k, r = spec.split(":")
    return {"sample": 64, "replay_batch": 1, "replay_steps": int(k), "replay_rows": None if r == "all" else int(r)}


def _write_json(args, results: list[dict], checkpoint: dict) -> dict:
    out = {"models": args.models.split(","), "steps": args.steps, "seeds": list(args.seeds),
           "held_out_seeds": list(HELD_OUT_SEEDS), "min_spearman": MIN_SPEARMAN, "max_p": MAX_P,
           "checkpoint": checkpoint, "command": " ".join(args.argv), "results": results}
    atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return out


def run_auto(args) -> None:
    """Check every setting the auto mode may choose against the exact profile on each model (see the docstring)."""
    settings = checked_settings()
    if args.settings:
        settings = [_setting(x, settings) for x in args.settings.split(",")]
    results: list[dict] = []
    checkpoint: dict[str, str] = {}
    for model in args.models.split(","):
        pipe, cond, heldout, size = _load(model, args.size)
        info = describe(pipe)
        base = dict(steps=args.steps, seeds=tuple(args.seeds), **cond)
        run = partial(_profile, pipe, model, base, args)

        exact, t_exact = run({})
        scored: dict = {}
        for setting in settings:
            approx, t_approx = run(setting)
            rho_all, per_fmt = _spearman({"exact": exact, "approx": approx})
            plans = _plans(pipe, info, {"exact": exact, "approx": approx}, scored, heldout, args.steps, size)
            lowest = min(rho_all, *(v[0] for v in per_fmt.values()))
            ok = lowest >= MIN_SPEARMAN and not any(r.get("significantly_worse") for r in plans)
            results.append({"model": model, "setting": setting, "seconds_exact": t_exact, "seconds": t_approx,
                            "spearman": rho_all, "spearman_per_format": per_fmt, "plans": plans, "pass": ok})
            print(json.dumps(results[-1]), flush=True)
            _write_json(args, results, checkpoint)  # so far: a long sweep cut short still leaves its results
        # checkpointing changes no number: the cheapest replay's profile with every block checkpointed and without
        try:
            ck, _ = run(CHECKPOINT_CHECK, checkpointed=True)
            plain, _ = run(CHECKPOINT_CHECK)
            same = np.array_equal(plain.stats, ck.stats, equal_nan=True) and np.array_equal(
                plain.sensitivity, ck.sensitivity, equal_nan=True)
            checkpoint[model] = "bit for bit" if same else "DIFFERS"
        except UsageError as e:
            checkpoint[model] = f"n/a ({str(e).split(';')[0]})"
        print(model, "checkpoint:", checkpoint[model], flush=True)
    out = _write_json(args, results, checkpoint)
    if not args.no_doc:
        write_section("auto-mode-decisions", "The automatic profile mode's settings: effect on decisions",
                      render_auto(out), "python scripts/bench_scale_approx.py " + out["command"])


def render_auto(out: dict) -> str:
    """The markdown body of the section `auto-mode-decisions` from the JSON result."""
    rows = [("| model | setting | profile time (exact / approx.) | Spearman, all formats | Spearman per format | "
             "plans at the three budgets (held-out MSE exact / approx., paired Wilcoxon) | pass |"),
            "| --- | --- | ---: | ---: | --- | --- | --- |"]
    models = list(dict.fromkeys(r["model"] for r in out["results"]))
    out = dict(out, results=sorted(out["results"], key=lambda r: (models.index(r["model"]),
                                                                  -r["setting"]["replay_steps"],
                                                                  r["setting"]["replay_rows"] or 0)))
    exact_s: dict[str, float] = {}  # a run that reused the exact profile timed its loading: the longest is its run
    for r in out["results"]:
        exact_s[r["model"]] = max(exact_s.get(r["model"], 0.0), r["seconds_exact"])
    for r in out["results"]:
        rows.append(f"| {r['model']} | {_label(r['setting'])} | {exact_s[r['model']]:.0f} s / {r['seconds']:.0f} s | "
                    f"{r['spearman']:.3f} | "
                    + ", ".join(f"{f} {v:.3f} ({n} layers)" for f, (v, n) in r["spearman_per_format"].items())
                    + " | " + "; ".join(_plan_cell(p) for p in r["plans"]) + f" | {'yes' if r['pass'] else 'NO'} |")
    by_setting: dict[str, list[dict]] = {}
    for r in out["results"]:
        by_setting.setdefault(_label(r["setting"]), []).append(r)
    summary = [("| setting | models | lowest Spearman (model, format) | plans that differ / significantly worse | "
                "verdict |"), "| --- | --- | --- | --- | --- |"]
    for label, rs in sorted(by_setting.items(), key=lambda kv: (-kv[1][0]["setting"]["replay_steps"],
                                                                kv[1][0]["setting"]["replay_rows"] or 0)):
        low = min(((v, r["model"], f) for r in rs for f, (v, _) in r["spearman_per_format"].items()),
                  default=(1.0, "", ""))
        low = min(low, *((r["spearman"], r["model"], "all") for r in rs))
        plans = [p for r in rs for p in r["plans"]]
        summary.append(f"| {label} | {', '.join(r['model'] for r in rs)} | {low[0]:.3f} ({low[1]}, {low[2]}) | "
                       f"{sum(bool(p['differ']) for p in plans)} of {len(plans)} / "
                       f"{sum(bool(p.get('significantly_worse')) for p in plans)} | "
                       f"{'pass' if all(r['pass'] for r in rs) else 'FAIL'} |")
    ck = ", ".join(f"{m}: {v}" for m, v in out["checkpoint"].items())
    return (f"Every setting the automatic profile mode could choose before this check (sample 64, micro-batch 1, "
            f"5 down to 1 replayed steps, every row or one row; `mpsearch.profiling.auto.checked_settings()` now "
            f"lists those that pass), against the exact profile of each model ({out['steps']} steps, "
            f"seeds {out['seeds']}; the default models on labels 0-9, the tiny "
            f"architectures (random weights, `mpsearch.apps.testing`) on {TINY_PROMPTS} built-in calibration "
            f"prompts at "
            f"16 px). Per-layer cost = the gn metric summed over steps, per (layer, format). Plans solved at the "
            f"demo's three budgets from each profile; where they differ, both are scored on the held-out seeds "
            f"{out['held_out_seeds']} (labels 0-9, or {DEFAULT_EVAL_PROMPTS} held-out prompts): mean MSE against "
            f"full precision and a paired Wilcoxon signed-rank test over the images. The bar: Spearman >= "
            f"{out['min_spearman']} (overall and per format) and no plan significantly worse (p < {out['max_p']} "
            f"and a higher mean MSE). Checkpointing every block ({_label(CHECKPOINT_CHECK)}, stats and "
            f"sensitivities compared): {ck}. Profile "
            f"times were measured on a machine shared with other jobs (indicative).\n\n"
            + "\n".join(summary) + "\n\n" + "\n".join(rows))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=64)
    ap.add_argument("--replay-steps", type=int, default=5)
    ap.add_argument("--models", default="default,default-unet")
    ap.add_argument("--dir", default="/tmp/mpsearch-scale-approx")
    ap.add_argument("--replay-rows", type=int, default=None)
    ap.add_argument("--against-approx", action="store_true",
                    help="the baseline keeps sample and replay_steps: what --replay-rows alone changes")
    ap.add_argument("--reuse", action="store_true", help="reuse profiles already under --dir (times then show "
                    "loading, not profiling)")
    ap.add_argument("--auto", action="store_true", help="check every setting the automatic profile mode may "
                    "choose (section auto-mode-decisions); --sample, --replay-steps, --replay-rows are not used")
    ap.add_argument("--settings", default=None, help="with --auto: only these (indices of checked_settings(), or "
                    "K:R for K replayed steps of R rows, R=all for every row: e.g. 1:1,5:all)")
    ap.add_argument("--steps", type=int, default=20, help="with --auto: denoising steps of every profile")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1],
                    help="with --auto: profiling seeds (default 0,1)")
    ap.add_argument("--size", type=int, default=16, help="with --auto: image size of the tiny text-to-image models")
    ap.add_argument("--json", default="/tmp/mpsearch-scale-approx/auto-mode-decisions.json",
                    help="with --auto: where the JSON result goes")
    ap.add_argument("--no-doc", action="store_true", help="with --auto: do not write docs/benchmarks.md")
    ap.add_argument("--render", default=None,
                    help="with --auto: write the section from these JSON results only (comma-separated: the runs' "
                    "results together, in order)")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.auto:
        if set(args.seeds) & set(HELD_OUT_SEEDS):
            ap.error(f"--seeds must not include the held-out seeds {list(HELD_OUT_SEEDS)}")
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        if args.render:
            runs = [json.loads(Path(f).read_text()) for f in args.render.split(",")]
            out = dict(runs[0], results=[r for run in runs for r in run["results"]],
                       checkpoint={m: v for run in runs for m, v in run["checkpoint"].items()})
            write_section("auto-mode-decisions", "The automatic profile mode's settings: effect on decisions",
                          render_auto(out), "; ".join(f"python scripts/bench_scale_approx.py {run['command']}"
                                                      for run in runs))
            return
        run_auto(args)
        return
    rows = ["| model | approximation | profile time (exact / approx.) | Spearman, per-layer gn (all formats) | "
            "Spearman per format | budget | plan | held-out MSE exact / approx. |",
            "| --- | --- | ---: | ---: | --- | --- | --- | --- |"]
    opts = {"sample": args.sample, "replay_steps": args.replay_steps}
    base = dict(opts) if args.against_approx else {}
    if args.replay_rows is not None:
        opts["replay_rows"] = args.replay_rows
    label = ", ".join(f"{k}={v}" for k, v in opts.items())
    if base:
        label += " (baseline: " + ", ".join(f"{k}={v}" for k, v in base.items()) + ")"
    for model in args.models.split(","):
        pipe = load_pipeline(model)
        info = describe(pipe)
        profs, secs = {}, {}
        for name, o in (("exact", base), ("approx", opts)):
            tag = "-".join(f"{k}{v}" for k, v in sorted(o.items())) or "exact"
            path = Path(args.dir) / f"{model}-{tag}.sqlite"
            if not args.reuse:
                path.unlink(missing_ok=True)  # measure the profile's time, not a resumed file's
            t0 = time.perf_counter()
            profs[name] = profile(pipe, ProfileConfig(steps=20, **o), out=path, progress=False)
            secs[name] = time.perf_counter() - t0
        costs = {k: np.nansum(p.metric("gn"), axis=2) for k, p in profs.items()}  # (layers, formats)
        ok = np.isfinite(profs["exact"].metric("gn")[..., 0]) & (np.arange(costs["exact"].shape[1]) > 0)[None]
        rho_all = spearmanr(costs["exact"][ok], costs["approx"][ok]).statistic
        per_fmt = []
        for fi, f in enumerate(profs["exact"].formats):
            m = ok[:, fi]
            if fi and m.sum() > 2:
                per_fmt.append(f"{f} {spearmanr(costs['exact'][m, fi], costs['approx'][m, fi]).statistic:.3f}")
        reference = None
        for bname, nbytes in comparison_budgets(info).items():
            plans = {k: solve(p, nbytes, role_pins={}) for k, p in profs.items()}
            same = plans["exact"].layers == plans["approx"].layers
            if same:
                verdict, mse = "same", ""
            else:
                if reference is None:
                    reference = generate_many(pipe, tuple(range(10)), HELD_OUT_SEEDS, 20)
                diff = sum(plans["exact"].layers[k] != plans["approx"].layers.get(k) for k in plans["exact"].layers)
                per = {k: _per_image_mse(pipe, p, reference) for k, p in plans.items()}
                worse = int((per["approx"] > per["exact"]).sum())
                p_value = wilcoxon(per["approx"], per["exact"]).pvalue
                verdict = f"{diff} of {len(plans['exact'].layers)} layers differ"
                mse = (f"{per['exact'].mean():.4g} / {per['approx'].mean():.4g} (approx. worse on {worse} of "
                       f"{len(per['exact'])} images; paired Wilcoxon p = {p_value:.2g})")
            rows.append(f"| {model} | {label} | {secs['exact']:.0f} s / {secs['approx']:.0f} s | {rho_all:.3f} | "
                        f"{', '.join(per_fmt)} | {bname} | {verdict} | {mse} |")
            print(rows[-1], flush=True)
    first = "The baseline (columns `exact`: sample and replay_steps only)" if base else "Exact"
    body = (f"{first} vs approximate local profile of each default model (20 steps, seeds 0 and 1, labels 0-9); "
            "per-layer "
            "cost = the gn metric summed over steps, per (layer, format). Plans solved at the demo's three budgets "
            f"from each profile; where they differ, both are scored on held-out seeds {list(HELD_OUT_SEEDS)} (mean "
            "MSE against full precision, and a paired Wilcoxon signed-rank test over the images). Profile times "
            "were measured on a machine shared with other jobs (indicative).\n\n"
            + "\n".join(rows))
    section, title = ("scale-approx-rows", "Replaying a random row of each guidance batch: effect on decisions "
                      "(default models)") if base else ("scale-approx", "Profiling approximations: effect on "
                                                        "decisions (default models)")
    write_section(section, title, body,
                  "python scripts/bench_scale_approx.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
