"""What the profiler's approximations (``sample``: seeded channel x row subsets; ``replay_steps``: a subset of
steps replayed for the output sensitivity) change on the default models: Spearman of per-layer costs (gn,
summed over steps) between the exact and the approximate profile, and the plans solved at the demo's budgets
(same, or their held-out MSE beside each other). Profiles are kept under --dir and reused. Writes the
`scale-approx` section of docs/benchmarks.md.

    python scripts/bench_scale_approx.py --sample 64 --replay-steps 5

``--replay-rows R`` adds that approximation (a random R rows of each replayed call's batch, scaled up);
``--against-approx`` then compares against the profile with the other approximations only (``sample`` and
``replay_steps``), so the table shows what ``replay_rows`` alone changes (section `scale-approx-rows`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from benchdoc import write_section
from scipy.stats import spearmanr, wilcoxon

from mpsearch.allocation.solving import solve
from mpsearch.apps.demo import comparison_budgets
from mpsearch.apps.evaluate import HELD_OUT_SEEDS
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.apps.profile import ProfileConfig, profile
from mpsearch.models import describe
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate_many


def _per_image_mse(pipe, plan, reference) -> np.ndarray:
    """MSE against full precision of each held-out image generated with ``plan`` (labels 0-9 x held-out seeds)."""
    with apply_plan(pipe, plan):
        images = generate_many(pipe, tuple(range(10)), HELD_OUT_SEEDS, 20)
    diff = np.asarray(images, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return (diff ** 2).reshape(len(diff), -1).mean(axis=1)


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
    args = ap.parse_args(argv)
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
