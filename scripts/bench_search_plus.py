"""Benchmark search beyond one ILP: compute constraints at scale, Pareto sweeps, Optuna refinement, baselines.

1. Solve time for the synthetic 2,000-layer x 4-format problem of bench_solver.py under a memory budget and a
   compute constraint (ilp, highs, greedy, random).
2. Time of a 20-budget Pareto sweep of that problem (ILP; answers reused where they fit a smaller budget).
3. On the embedded default DiT (a small local profile made here): at one budget, the ILP's plan, the plan
   Optuna refines from it with real generations on search seeds, greedy and random allocations, all scored
   on held-out seeds against full precision (1 - SSIM, relative MSE, class agreement).
4. On the default DiT: the latency table measured on the machine at hand (per-format totals as a ratio to fp),
   one plan solved with the compute priced by that table (``--compute-cost latency``) and one priced in bit
   operations, at one memory budget, and the real generation time of each beside full precision's.

    python scripts/bench_search_plus.py [--trials 10] [--budget 30%] [--no-doc]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solver import synthetic_problem  # noqa: E402

from mpsearch.allocation.solvers import Problem, format_bytes, get_solver  # noqa: E402


def synthetic(lines: list[str]) -> None:
    problem, compute = synthetic_problem(2000, 0)
    full = problem.fixed_bytes + int(problem.nbytes[:, 0].sum())
    for name in ("cbc", "highs", "greedy", "random"):  # warm imports
        get_solver(name).solve(problem.with_budget(full))
    p = Problem(problem.layer_names, problem.formats, problem.cost, problem.nbytes, fixed_bytes=problem.fixed_bytes,
                budget_bytes=int(0.45 * full), groups=problem.groups, extra=(compute,))
    lines += ["### 2,000 layers x 4 formats, memory 45% of fp and compute 55% of fp", "",
              f"{p.decisions.count} decisions ({len(p.groups)} tie groups of 3).", "",
              "| solver | seconds | objective | vs ILP | bytes | compute / limit | status |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    best = None
    for name in ("cbc", "highs", "greedy", "random"):
        sol = get_solver(name).solve(p)
        best = sol.objective if best is None else best
        lines.append(f"| {name} | {sol.seconds:.2f} | {sol.objective:.6g} | {sol.objective / best - 1:+.2%} | "
                     f"{format_bytes(sol.total_bytes)} | {compute.value(sol.choice) / compute.rhs:.4f} | "
                     f"{sol.status} |")
    from mpsearch.allocation.pareto import pareto_budgets, sweep

    budgets = pareto_budgets(problem, 20)
    t0 = time.perf_counter()
    points = sweep(problem, budgets)
    seconds = time.perf_counter() - t0
    reused = sum(pt.reused for pt in points)
    lines += ["", f"### 20-budget Pareto sweep (ILP, memory only): {seconds:.1f} s in all, "
              f"{seconds / len(budgets):.2f} s per budget; {reused} of {len(budgets)} answers reused from a larger "
              f"budget; {sum(pt.on_frontier for pt in points)} points on the frontier", ""]


def default_dit(lines: list[str], trials: int, budget: str) -> None:
    import mpsearch
    from mpsearch.allocation.objective import build_problem
    from mpsearch.allocation.refine import refine
    from mpsearch.apps.evaluate import evaluate_plan
    from mpsearch.apps.profile import profile
    from mpsearch.classifier import load_classifier
    from mpsearch.plan import Plan
    from mpsearch.runtime.generation import generate_many

    steps, labels, held_out = 8, tuple(range(10)), (1000, 1001)
    pipe = mpsearch.load_pipeline("default")
    classifier = load_classifier()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prof = profile(pipe, out=Path(tmp) / "p.sqlite", steps=steps, seeds=(0,), labels=labels, progress=False)
        t_profile = time.perf_counter() - t0
    info = prof.info
    problem_budget = mpsearch.budget.parse_budget(budget, fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes,
                                                  quantizable_numel=info.quantizable_numel).bytes
    problem = build_problem(prof, problem_budget)
    reference = generate_many(pipe, labels, held_out, steps)
    plans = {}
    for name in ("cbc", "greedy", "random"):
        sol = get_solver(name).solve(problem)
        plans[name] = (Plan.from_assignment(info, sol.assignment(problem)), sol.objective, sol.seconds)
    t0 = time.perf_counter()
    plan, report = refine(prof, pipe, budget, trials=trials, steps=steps, seeds=(500,), labels=labels)
    t_search = time.perf_counter() - t0
    plans["optuna (ILP-seeded)"] = (plan, problem.objective(np.array(
        [problem.formats.index(plan.layers[n]) for n in problem.layer_names])), t_search)
    lines += [f"### Default DiT at {budget} ({format_bytes(problem_budget)}), held-out seeds {list(held_out)}, "
              f"{steps} steps, 10 labels", "",
              f"Profile: {steps} steps, 1 seed ({t_profile:.0f} s). Optuna: {report.get('trials')} trials "
              f"({report.get('feasible_trials')} feasible) on search seed 500, NSGA-II, seeded with the ILP's answers "
              f"at 100/99/98/96/93/90% of the budget; chosen trial {report.get('chosen', {}).get('trial')} "
              f"({report.get('chosen', {}).get('source')}), search score "
              f"{report.get('chosen', {}).get('score_vs_reference', float('nan')):.3f} x the ILP's; "
              f"{_validation_text(report)}.", "",
              "| plan | bytes | predicted (ILP objective) | 1 - SSIM | rel. MSE | class agreement | solve seconds |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    power = float(np.mean(np.square(reference)))
    for name, (p, objective, seconds) in plans.items():
        s = evaluate_plan(pipe, p, labels=labels, seeds=held_out, steps=steps, reference=reference,
                          classifier=classifier)
        lines.append(f"| {name} | {format_bytes(p.predicted_bytes)} | {objective:.4g} | {1 - s['ssim']:.4f} | "
                     f"{s['mse'] / power:.5f} | {s.get('class_agreement', float('nan')):.2f} | {seconds:.1f} |")


def _validation_text(report: dict) -> str:
    """What refine()'s validation seeds said about the search's pick, in words."""
    v = report.get("validation")
    if not v:
        return "the pick is the ILP's own plan, so no validation was needed"
    kept = "the pick is kept" if v["kept"] == "search" else "the ILP's plan is kept"
    return (f"validation seeds {v['seeds']} ({v['images']} images): the pick scored {v['score_vs_ilp']:.3f} x the "
            f"ILP's plan, one-sided Wilcoxon p = {v['p_value']:.3g}, so {kept}")


def latency(lines: list[str], *, threads: int | None = 1, **options) -> None:
    """Part 4: the latency table of the default DiT, and latency- vs bops-priced plans timed for real.

    ``threads`` (None: torch's default) holds for the table and the generations alike. One by default: on the
    shared two-core machine the benchmarks run on, two threads timed each layer alone ~50x slower than it runs
    within a generation (contention), so the table said more about the machine's load than about the layers."""
    import torch

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        _latency(lines, **options)
    finally:
        torch.set_num_threads(saved)


def _latency(lines: list[str], *, budget: str = "60%", bops: str = "50%", steps: int = 8,
             labels=tuple(range(10)), min_time: float = 0.05, repeats: int = 3,
             shares=("100%", "125%", "150%", "200%", "300%", "500%")) -> None:
    """The latency-priced plan takes the first of ``shares`` (of fp's measured layer time) that the memory
    budget leaves feasible: where the quantized modules are slower than fp (emulated low-bit arithmetic on a
    CPU), a budget below 100% admits no plan, and that is reported rather than hidden."""
    import torch

    import mpsearch
    from mpsearch.allocation.compute import compute_problem, record_layer_calls
    from mpsearch.allocation.objective import build_problem
    from mpsearch.apps.profile import profile
    from mpsearch.errors import InfeasibleError
    from mpsearch.plan import Plan
    from mpsearch.profiling.latency import measure_latency
    from mpsearch.runtime.executor import apply_plan
    from mpsearch.runtime.generation import generate

    labels = tuple(labels)
    pipe = mpsearch.load_pipeline("default")
    with tempfile.TemporaryDirectory() as tmp:
        prof = profile(pipe, out=Path(tmp) / "p.sqlite", steps=steps, seeds=(0,), labels=labels, progress=False)
    info = prof.info
    t0 = time.perf_counter()
    table = measure_latency(pipe, info, formats=prof.formats, steps=steps, conditions=list(labels),
                            min_time=min_time, progress=False)
    t_table = time.perf_counter() - t0
    lines += [f"### Latency table of the default DiT ({table.device}, torch {table.meta['torch']}, "
              f"{table.meta['threads']} thread(s); {len(labels)} labels per denoiser call, {t_table:.0f} s to measure)",
              "", "| format | layers | seconds per denoiser call | x fp (same layers) |",
              "| --- | ---: | ---: | ---: |"]
    for name, t in table.totals().items():
        lines.append(f"| {name} | {t['layers']} | {t['seconds'] * 1e3:.3f} ms | {t['vs_fp']:.2f} |")
    b = mpsearch.budget.parse_budget(budget, fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes,
                                     quantizable_numel=info.quantizable_numel).bytes
    base = build_problem(prof, b)
    calls = record_layer_calls(pipe, info, steps=steps, windows=2, formats=prof.formats[1:])
    plans: dict[str, tuple] = {"fp": (None, None, "-")}
    cm = compute_problem(prof, base, calls, bops)
    sol = get_solver("cbc").solve(cm.problem)
    plans[f"bops <= {bops} of fp"] = (cm, sol.choice, f"{sol.objective:.4g}")
    chosen, tried = None, []
    for share in shares:
        try:
            cm = compute_problem(prof, base, calls, share, cost=table)
            sol = get_solver("cbc").solve(cm.problem)
        except InfeasibleError:
            tried.append(share)
            continue
        chosen = share
        plans[f"latency <= {share} of fp"] = (cm, sol.choice, f"{sol.objective:.4g}")
        break
    lat = compute_problem(prof, base, calls, "1000000%", cost=table)  # prices every plan in the table's seconds

    def timed(plan):
        handle = apply_plan(pipe, plan) if plan is not None else None
        try:
            images = generate(pipe, labels, 0, steps)  # warm-up, and the images compared with fp's
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                generate(pipe, labels, 0, steps)
                times.append(time.perf_counter() - t)
        finally:
            if handle:
                handle.remove()
        return float(np.median(times)), images

    fp_seconds, reference = timed(None)
    power = float(np.mean(np.square(reference)))
    lines += ["", f"Memory budget {budget} ({format_bytes(b)}, default role pins), {steps} steps, "
              f"{len(labels)} labels; "
              f"generation wall time = median of {repeats} after a warm-up, {torch.get_num_threads()} thread(s). "
              f"Predicted = the candidate layers' seconds per denoiser call in the table (timed alone), x "
              f"{calls.calls} denoiser calls per generation for the time per generation."
              + (f" Latency budgets {', '.join(tried)} of fp admit no plan at this memory budget on this device."
                 if tried else "")
              + ("" if chosen else " No latency budget tried admits a plan."), "",
              "| plan | bytes | objective | bit ops vs fp | predicted layer time vs fp | predicted layer time per "
              "generation | generation | vs fp | rel. MSE vs fp |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    bops_model = compute_problem(prof, base, calls, "1000000%")
    for name, (model, choice, objective) in plans.items():
        if model is None:
            plan, choice = None, np.zeros(len(info.layers), dtype=int)
            nbytes = info.fp_bytes
        else:
            assignment, overrides = model.decode(choice)
            plan = Plan.from_assignment(info, assignment, overrides=overrides)
            nbytes = plan.predicted_bytes
            choice = lat.encode(assignment, overrides)
        seconds, images = (fp_seconds, reference) if plan is None else timed(plan)
        mse = float(np.mean(np.square(images - reference))) / power
        lines.append(f"| {name} | {format_bytes(nbytes)} | {objective} | "
                     f"{bops_model.value(choice) / bops_model.full:.2f} | {lat.value(choice) / lat.full:.2f} | "
                     f"{lat.value(choice) * calls.calls:.3f} s | {seconds:.3f} s | {seconds / fp_seconds:.2f} | "
                     f"{mse:.2e} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--budget", default="35%")
    ap.add_argument("--latency-budget", default="60%", help="memory budget of the latency part (4)")
    ap.add_argument("--latency-threads", type=int, default=1, help="torch threads of the latency part (0: default)")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lines: list[str] = []
    synthetic(lines)
    default_dit(lines, args.trials, args.budget)
    lines.append("")
    latency(lines, threads=args.latency_threads or None, budget=args.latency_budget)
    lines += ["", f"Whole benchmark: {time.perf_counter() - t0:.0f} s."]
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        from benchdoc import write_section

        write_section("bench_search_plus", "Search beyond one ILP: compute budget, Pareto sweep, Optuna refinement",
                      body,
                      "python scripts/bench_search_plus.py" + (f" --trials {args.trials}" if args.trials != 10 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
