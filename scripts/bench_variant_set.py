"""Which quantizer variants earn their profiling cost: each default model's profile with every variant, solved
with every variant and with a subset, at the evidence suite's byte budgets, and the profile's time per set.

For each default model, with the evidence suite's profile configuration (as `bench_variants`):

- profiles timed side by side (alternating): no variants, the subset (``--subset``), every variant (``all``);
- from the ``all`` profile: at each byte budget of docs/bench_all.json, the ILP's plan over every variant and
  its plan over the subset (`Profile.select_formats`, the same measurements); how many layers differ and the
  variants each chose; where the plans differ, both scored on the test seeds (paired Wilcoxon, bootstrap
  interval of the mean-MSE ratio, as the evidence suite);
- per layer, whether the subset holds the layer's lowest measured cost (summed over steps, per base format).

    python scripts/bench_variant_set.py --subset gptq,smooth-gptq       # both models (about 15 min on 2 CPUs)
    python scripts/bench_variant_set.py --models default --save-results /tmp/set_dit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import publish

import mpsearch
from mpsearch.allocation.objective import layer_costs
from mpsearch.allocation.solving import solve
from mpsearch.apps.evaluate import evaluate_plan
from mpsearch.apps.profile import ProfileConfig, profile
from mpsearch.apps.report.significance import compare, verdicts
from mpsearch.classifier import load_classifier
from mpsearch.formats.variant import VARIANTS, split_candidate
from mpsearch.runtime.generation import generate_many
from mpsearch.runtime.kernels import select_kernels

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "docs" / "bench_all.json"


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _variants(plan) -> dict:
    return dict(Counter(split_candidate(f)[1] or "plain" for f in dict(plan.layers).values()))


def run_model(model: str, stored: dict, stored_args: dict, subset: tuple[str, ...], tmp: Path) -> dict:
    pipe = mpsearch.load_pipeline(model)
    config = ProfileConfig(labels=tuple(stored_args["labels"]), seeds=tuple(stored_args["profile_seeds"]),
                           steps=stored_args["steps"])
    generate_many(pipe, config.labels[:2], (0,), 2)  # warm-up
    times, prof = {}, None
    for name, spec in (("none", "none"), ("subset", ",".join(subset)), ("all", "all")):
        prof_i, t = _timed(profile, pipe, config, out=tmp / f"{model}-{name}.sqlite", progress=False,
                           variants=spec)
        times[name] = t
        prof = prof_i
    print(f"{model}: profile {times['none']:.1f} s (none), {times['subset']:.1f} s (subset), "
          f"{times['all']:.1f} s (all)", flush=True)
    sub = prof.select_formats([f for f in prof.formats if f != "fp" and split_candidate(f)[1] in (None, *subset)])

    best = _best_in_subset(prof, subset)

    clf = load_classifier()
    seeds = tuple(stored_args["seeds"])
    reference = None
    budgets = {}
    for bname, b in stored["budgets"].items():
        nbytes = int(b["bytes"])
        p_all = solve(prof, f"{nbytes}B", role_pins={})
        p_sub = solve(sub, f"{nbytes}B", role_pins={})
        la, ls = dict(p_all.layers), dict(p_sub.layers)
        differ = sorted(n for n in la if la[n] != ls[n])
        row = {"bytes": nbytes, "differ": differ, "all": _variants(p_all), "subset": _variants(p_sub)}
        if differ:
            if reference is None:
                reference = generate_many(pipe, config.labels, seeds, config.steps)
            s = {k: evaluate_plan(pipe, p, classifier=clf, labels=config.labels, seeds=seeds, steps=config.steps,
                                  reference=reference) for k, p in (("all", p_all), ("subset", p_sub))}
            row["mse"] = {k: v["mse"] for k, v in s.items()}
            row["compare"] = compare(s["subset"]["mse_per_image"], s["all"]["mse_per_image"])
        print(f"  {model} {bname}: {len(differ)} layers differ; all {row['all']}, subset {row['subset']}"
              + (f"; mse all {row['mse']['all']:.3g}, subset {row['mse']['subset']:.3g}" if differ else ""),
              flush=True)
        budgets[bname] = row
    return {"model": model, "times": times, "best_in_subset": best, "budgets": budgets}


def _best_in_subset(prof, subset) -> dict:
    """Per base format: of the layers where it has variants, those whose lowest cost (the ILP's per-layer cost,
    summed over steps) is a variant outside ``subset``, with how much higher the subset's best is."""
    costs = layer_costs(prof)  # (layers, formats), NaN where ineligible
    out: dict[str, dict] = {}
    for base in ("int8", "nvfp4", "int4"):
        cols = [i for i, f in enumerate(prof.formats) if split_candidate(f)[0] == base]
        inside = [i for i in cols if split_candidate(prof.formats[i])[1] in (None, *subset)]
        total, outside = 0, []
        for li, layer in enumerate(prof.info.layers):
            row = {i: float(costs[li, i]) for i in cols if np.isfinite(costs[li, i])}
            if len(row) < 2:
                continue
            total += 1
            i_best = min(row, key=row.get)
            if i_best not in inside:
                sub_best = min(row[i] for i in inside if i in row)
                outside.append({"layer": layer.name, "best": prof.formats[i_best],
                                "excess": sub_best / max(row[i_best], 1e-30)})
        out[base] = {"layers": total, "outside": outside}
    return out


def render(results: list[dict], subset: tuple[str, ...]) -> str:
    """The section's body: profile times per set, per budget whether the subset's plan equals every variant's,
    and per base format the layers whose best candidate lies outside the subset."""
    names = ", ".join(subset)
    out = [f"Profile time with no variants, with the subset ({names}) and with every variant (`all`), alternating in "
           "one process, and the ILP's plans from the `all` profile solved over every variant and over the subset "
           "(the same measurements) at the evidence suite's byte budgets.", "",
           "| model | no variants | subset | all | subset / none | all / none | all / subset |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        t = r["times"]
        out.append(f"| {r['model']} | {t['none']:.1f} s | {t['subset']:.1f} s | {t['all']:.1f} s | "
                   f"{t['subset'] / t['none']:.2f}x | {t['all'] / t['none']:.2f}x | {t['all'] / t['subset']:.2f}x |")
    out += ["", "| model | budget | layers whose format differs | chosen (all) | chosen (subset) | test-seed MSE "
            "(subset / all) |", "| --- | --- | ---: | --- | --- | --- |"]
    same = total = 0
    for r in results:
        for bname, b in r["budgets"].items():
            total += 1
            same += not b["differ"]
            chosen = [", ".join(f"{k} {v}" for k, v in sorted(b[k].items())) for k in ("all", "subset")]
            mse = (f"{b['compare']['ratio']:.2f} ({b['compare']['lo']:.2f}-{b['compare']['hi']:.2f}), "
                   f"{b['compare'].get('verdict', '')}" if "compare" in b else "same plan")
            out.append(f"| {r['model']} | {bname} | {len(b['differ'])} | {chosen[0]} | {chosen[1]} | {mse} |")
    out += ["", "| model | base format | layers with variants | layers whose lowest cost is outside the subset |",
            "| --- | --- | ---: | ---: |"]
    outside = 0
    for r in results:
        for base, v in r["best_in_subset"].items():
            outside += len(v["outside"])
            out.append(f"| {r['model']} | {base} | {v['layers']} | {len(v['outside'])} |")
    out += ["", f"The subset's plan is the same as every variant's in **{same} of {total}** budgets; "
            f"**{outside}** layer-format pairs have their lowest measured cost outside the subset."]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="default,default-unet")
    ap.add_argument("--subset", default="gptq,smooth-gptq")
    ap.add_argument("--save-results", default=None)
    ap.add_argument("--from-results", default=None, help="measure nothing: render these saved results")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--kernels", default="nvfp4=float")
    args = ap.parse_args(argv)
    subset = tuple(args.subset.split(","))
    bad = [v for v in subset if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    command = "python scripts/bench_variant_set.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_results:
        saved = json.loads(Path(args.from_results).read_text())
        results, subset = saved["results"], tuple(saved.get("subset", subset))
    else:
        select_kernels(args.kernels)
        stored_all = json.loads(STORED.read_text())
        by_model = {r["model"]: r for r in stored_all["results"]}
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for model in args.models.split(","):
                results.append(run_model(model, by_model[model], stored_all["args"], subset, Path(tmp)))
        fam = [b["compare"] for r in results for b in r["budgets"].values() if "compare" in b]
        for c, v in zip(fam, verdicts(fam), strict=True):
            c["verdict"] = v
        if args.save_results:
            Path(args.save_results).write_text(json.dumps({"results": results, "command": command, "subset": subset},
                                                          indent=1, default=float))
    publish("bench_variant_set", "Which quantizer variants a profile measures by default", render(results, subset),
            "bench_variant_set.py", argv, doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
