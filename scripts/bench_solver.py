"""Benchmark the array-level solvers on a synthetic, realistic allocation problem.

2,000 layers x 4 formats (fp, int8, nvfp4, int4): layer sizes log-uniform between 0.1 M and 50 M weights,
exact bytes per format (scales included), costs that fall as bytes rise (a per-layer sensitivity times a
per-format error factor, with noise), ~10% of layers ineligible for the 4-bit formats, and q/k/v-like tie
groups of 3. Three byte budgets, each with and without an extra compute constraint (a latency-like cost per
format, limited to 55% of the full-precision total). Prints a markdown table and the machine.

    python scripts/bench_solver.py [--layers 2000] [--seed 0] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

from mpsearch.allocation.solvers import Constraint, Problem, format_bytes, get_solver, min_feasible_bytes

FORMATS = ("fp", "int8", "nvfp4", "int4")
SOLVERS = ("cbc", "highs", "greedy")
BUDGET_FRACTIONS = (0.35, 0.45, 0.60)  # of the full-precision bytes


def synthetic_problem(n_layers: int, seed: int) -> tuple[Problem, Constraint]:
    rng = np.random.default_rng(seed)
    d_in = 64 * rng.integers(2, 80, size=n_layers)  # multiples of 64
    d_out = 64 * rng.integers(2, 80, size=n_layers)
    odd = rng.random(n_layers) < 0.10  # input dim no multiple of 16/128: no nvfp4, no int4
    d_in[odd] += 8
    elems = d_in * d_out
    nbytes = np.stack(
        [
            2 * elems,  # bf16
            elems + 4 * d_out,  # int8 + fp32 channel scales
            elems // 2 + elems // 16 + 4,  # nvfp4: E2M1 + E4M3 block scales + tensor scale
            elems // 2 + 4 * (elems // 128),  # int4 g128 + fp16 scale and zero
        ],
        axis=1,
    ).astype(np.int64)
    sensitivity = rng.lognormal(mean=0.0, sigma=1.5, size=n_layers)
    factor = np.array([0.0, 1.0, 12.0, 20.0])
    noise = rng.lognormal(0.0, 0.3, size=(n_layers, 4))
    cost = sensitivity[:, None] * factor[None, :] * noise
    cost[odd, 2:] = np.inf
    # q/k/v-like tie groups: 400 groups of 3 consecutive layers with equal shapes and eligibility.
    groups = []
    for start in range(0, min(n_layers - 2, 1200), 3):
        members = (start, start + 1, start + 2)
        nbytes[list(members)] = nbytes[start]
        cost[list(members)[1:], 2:] = np.where(np.isinf(cost[start, 2:]), np.inf, cost[list(members)[1:], 2:])
        groups.append(members)
    latency = elems[:, None] * np.array([1.0, 0.45, 0.30, 0.85])[None, :]  # int4 is weight-only (A16)
    compute = Constraint("compute", latency, rhs=0.55 * float(latency[:, 0].sum()))
    problem = Problem(
        layer_names=tuple(f"blocks.{i // 8}.layer{i % 8}" for i in range(n_layers)),
        formats=FORMATS,
        cost=cost,
        nbytes=nbytes,
        fixed_bytes=int(4 * d_out.sum()),  # biases and norms
        groups=tuple(groups),
    )
    return problem, compute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="time each solve this many times, keep the best")
    args = parser.parse_args(argv)

    problem, compute = synthetic_problem(args.layers, args.seed)
    full = problem.fixed_bytes + int(problem.nbytes[:, 0].sum())
    for name in SOLVERS:  # warm imports (pulp, scipy) before timing
        get_solver(name).solve(problem.with_budget(full))

    print(f"# Solver benchmark: {args.layers} layers x {len(FORMATS)} formats, {len(problem.groups)} tie groups of 3, "
          f"{problem.decisions.count} decisions, {int(np.isinf(problem.cost).sum())} ineligible entries")
    print()
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"full precision: {full:,} B ({format_bytes(full)}); smallest feasible: "
          f"{min_feasible_bytes(problem):,} B ({format_bytes(min_feasible_bytes(problem))})")
    print()
    print("| budget | compute limit | solver | seconds | objective | total bytes | status | greedy gap to optimum |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: |")
    for fraction in BUDGET_FRACTIONS:
        budget = int(fraction * full)
        for extra in ((), (compute,)):
            p = Problem(problem.layer_names, problem.formats, problem.cost, problem.nbytes,
                        fixed_bytes=problem.fixed_bytes, budget_bytes=budget, groups=problem.groups, extra=extra)
            results = {}
            for name in SOLVERS:
                best_time, sol = float("inf"), None
                for _ in range(args.repeat):
                    try:
                        sol = get_solver(name).solve(p)
                    except Exception as exc:  # report, keep going
                        sol = exc
                        break
                    best_time = min(best_time, sol.seconds)
                results[name] = (best_time, sol)
            optimum = results["cbc"][1].objective if not isinstance(results["cbc"][1], Exception) else None
            for name, (seconds, sol) in results.items():
                label = f"{fraction:.0%} of fp ({format_bytes(budget)})"
                limit = "55% of fp" if extra else "none"
                if isinstance(sol, Exception):
                    print(f"| {label} | {limit} | {name} | - | {type(sol).__name__}: {sol} | | | |")
                    continue
                gap = ""
                if name == "greedy" and optimum is not None:
                    gap = (f"{(sol.objective - optimum) / optimum:+.3%}" if optimum
                           else f"{sol.objective - optimum:+.3g}")
                print(f"| {label} | {limit} | {name} | {seconds:.3f} | {sol.objective:.6g} | {sol.total_bytes:,} | "
                      f"{sol.status} | {gap} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
