"""Does calibrating on a seed the profile does not measure change the ILP's plans' test-seed error?

The calibration pass (mpsearch.profiling.calibrate) records the profile's conditions at its first seed, so the
variants' codes are fitted to inputs the profile then measures them on. This profiles a default model twice with
the evidence suite's configuration (labels 0-9, profile seeds 0 and 1, 20 steps, ``variants="default"``), once
as the library does and once with the calibration generation at ``--held-out-seed`` (neither a profile nor a
test seed), then at each of the evidence suite's budgets scores the ILP's and greedy's plans of both profiles on
the test seeds (paired: held-out / in-sample, and the ILP / greedy on the held-out profile). Prints a table.

    OMP_NUM_THREADS=1 python scripts/bench_calibration_seed.py --model default
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mpsearch
import mpsearch.profiling.calibrate as calibration_pass
from mpsearch.allocation.objective import build_problem
from mpsearch.allocation.solvers import get_solver
from mpsearch.allocation.solving import solve
from mpsearch.apps.evaluate import evaluate_plan
from mpsearch.apps.profile import ProfileConfig, profile
from mpsearch.apps.report.significance import compare
from mpsearch.plan import Plan
from mpsearch.runtime.generation import generate_many
from mpsearch.runtime.kernels import select_kernels

DOCS = Path(__file__).resolve().parent.parent / "docs"


def profile_calibrated_at(pipe, config, out, seed: int | None):
    """The profile, its calibration generation at ``seed`` (None: the library's choice, the first profile seed)."""
    original = calibration_pass.generate

    def at_seed(p, labels, s, *args):
        return original(p, labels, s if seed is None else seed, *args)

    calibration_pass.generate = at_seed
    try:
        return profile(pipe, config, out=out, progress=False, variants="default")
    finally:
        calibration_pass.generate = original


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--held-out-seed", type=int, default=2)
    args = ap.parse_args(argv)
    select_kernels("nvfp4=float")  # the evidence's bit-exact CPU path
    stored = json.loads((DOCS / "bench_all.json").read_text())
    sargs = stored["args"]
    config = ProfileConfig(labels=tuple(sargs["labels"]), seeds=tuple(sargs["profile_seeds"]), steps=sargs["steps"])
    seeds = tuple(sargs["seeds"])
    if args.held_out_seed in (*config.seeds, *seeds):
        ap.error(f"--held-out-seed {args.held_out_seed} is a profile or test seed; pick another")
    pipe = mpsearch.load_pipeline(args.model)
    tmp = Path(tempfile.mkdtemp())
    profs = {"in-sample": profile_calibrated_at(pipe, config, tmp / "in.sqlite", None),
             "held-out": profile_calibrated_at(pipe, config, tmp / "held.sqlite", args.held_out_seed)}
    reference = generate_many(pipe, config.labels, seeds, config.steps)
    budgets = {bn: int(b["bytes"]) for r in stored["results"] if r["model"] == args.model
               for bn, b in r["budgets"].items()}
    print("| model | budget | solver | in-sample MSE | held-out MSE | held-out / in-sample (95% CI) | "
          "same plan |")
    print("| --- | --- | --- | ---: | ---: | --- | --- |")
    for bname, nbytes in budgets.items():
        scores, layers = {}, {}
        for name, prof in profs.items():
            problem = build_problem(prof, nbytes, role_pins={})
            chosen = get_solver("greedy").solve(problem).assignment(problem)
            plans = {"ilp": solve(prof, f"{nbytes}B", role_pins={}),
                     "greedy": Plan.from_assignment(prof.info, chosen, weights=prof.weights,
                                                    provenance={"solver": "greedy"},
                                                    calibration=prof.calibration(list(chosen)))}
            for solver, plan in plans.items():
                scores[(name, solver)] = evaluate_plan(pipe, plan, labels=config.labels, seeds=seeds,
                                                       steps=config.steps, reference=reference)["mse_per_image"]
                layers[(name, solver)] = dict(plan.layers)
        for solver in ("ilp", "greedy"):
            a, b = scores[("in-sample", solver)], scores[("held-out", solver)]
            c = compare(b, a)
            same = layers[("in-sample", solver)] == layers[("held-out", solver)]
            print(f"| {args.model} | {bname} | {solver} | {sum(a) / len(a):.3g} | {sum(b) / len(b):.3g} | "
                  f"{c['ratio']:.2f} ({c['lo']:.2f}-{c['hi']:.2f}) | {'yes' if same else 'no'} |", flush=True)
        c = compare(scores[("held-out", "ilp")], scores[("held-out", "greedy")])
        ratio = f"{c['ratio']:.2f} ({c['lo']:.2f}-{c['hi']:.2f})"
        print(f"| {args.model} | {bname} | ilp / greedy (held-out) | | | {ratio} | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
