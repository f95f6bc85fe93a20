"""Pareto sweeps: one Problem solved under many byte budgets, the frontier written as CSV, JSON, PNG and plans.

``sweep(problem, budgets)`` is array-level (any registered solver); ``pareto(profile, ...)`` builds the
problem from a profile once, sweeps it, and turns every point into a Plan. Budgets are solved from the
largest down: an optimal answer at a larger budget that also fits a smaller one is optimal there too
(the feasible set only shrinks), so it is reused instead of solved again.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.allocation.config import SolveConfig
from mpsearch.allocation.formulation import as_formulation, budget_keywords
from mpsearch.allocation.solvers import DEFAULT_SOLVER, BaseSolver, Problem, Solution, get_solver, min_feasible_bytes
from mpsearch.budget import format_bytes, parse_budget
from mpsearch.errors import InfeasibleError, UsageError
from mpsearch.io import atomic_write_bytes

__all__ = ["ParetoPoint", "budget_range", "frontier_flags", "pareto", "pareto_budgets", "sweep", "uniform_points",
           "write_frontier"]


@dataclass
class ParetoPoint:
    """One budget of a sweep and what the solver made of it (``status`` "infeasible": no plan fits)."""

    budget_bytes: int
    total_bytes: int | None
    objective: float | None
    status: str
    seconds: float
    formats: dict = field(default_factory=dict)
    reused: bool = False
    on_frontier: bool = False
    plan: str | None = None
    extra: dict = field(default_factory=dict)  # value of every extra constraint (e.g. compute)
    choice: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The point as plain JSON-ready values (the choice array left out)."""
        return {"budget_bytes": self.budget_bytes, "total_bytes": self.total_bytes, "objective": self.objective,
                "status": self.status, "seconds": round(self.seconds, 6), "formats": dict(self.formats),
                "reused": self.reused, "on_frontier": self.on_frontier, "plan": self.plan, "extra": dict(self.extra)}


def budget_range(spec: str, *, fp_bytes: int, fixed_bytes: int = 0,
                 quantizable_numel: int | None = None) -> list[int] | None:
    """``"400KB:900KB:50KB"`` (start:stop:step, stop included) -> exact byte budgets; None if ``spec`` has no ':'.

    Start and stop take any budget form (``60%``, ``4.5bits``, ``600KB``); the step is a size (or a percent).
    """

    if not isinstance(spec, str) or ":" not in spec:
        return None
    parts = spec.split(":")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise UsageError(f"budget range {spec!r} must be START:STOP:STEP, e.g. 400KB:900KB:50KB")
    start, stop, step = (parse_budget(p.strip(), fp_bytes=fp_bytes, fixed_bytes=fixed_bytes,
                                      quantizable_numel=quantizable_numel).bytes for p in parts)
    if stop < start:
        raise UsageError(f"budget range {spec!r} ends below its start; write the smaller size first")
    if step < 1:
        raise UsageError(f"budget range {spec!r} has a step under one byte; give a larger step")
    count = (stop - start) // step + 1
    if count > 1000:
        raise UsageError(f"budget range {spec!r} has {count:,} budgets, more than 1,000; give a larger step")
    return [start + i * step for i in range(count)]


def _max_bytes(problem) -> int:
    dec = problem.decisions
    return problem.fixed_bytes + int(np.where(dec.allowed, dec.nbytes, 0).max(axis=1).sum())


def pareto_budgets(problem: Problem, n: int) -> list[int]:
    """``n`` budgets evenly spaced from the smallest feasible size to the largest (full precision)."""

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise UsageError(f"--pareto needs at least 2 points, got {n!r}; pass e.g. --pareto 20")
    lo, hi = min_feasible_bytes(problem), _max_bytes(problem)
    return sorted({int(round(b)) for b in np.linspace(lo, hi, n)})


def frontier_flags(points: list[ParetoPoint]) -> None:
    """Mark the points no other point beats in both bytes and objective (in place)."""
    # a solved point has both (sweep sets them together); an infeasible one neither
    solved = [(p, p.total_bytes, p.objective) for p in points if p.total_bytes is not None and p.objective is not None]
    for p, b, o in solved:
        p.on_frontier = not any((qb <= b and qo <= o) and (qb < b or qo < o) for _, qb, qo in solved)
    seen: set[tuple[int, float]] = set()  # equal points (a reused answer): only the first stays on the frontier
    for p, b, o in solved:
        key = (b, o)
        if p.on_frontier and key in seen:
            p.on_frontier = False
        seen.add(key)


def sweep(problem: Problem, budgets: Iterable[int], *, solver: str | BaseSolver = DEFAULT_SOLVER,
          solver_options: dict | None = None, progress: bool = False) -> list[ParetoPoint]:
    """Solve ``problem`` under each budget (bytes); points come back in ascending budget order.

    ``solver`` is a registered name or a solver instance. A budget below the smallest feasible size gives a
    point with status "infeasible"; when every budget is infeasible the first error is raised.
    """
    from tqdm.auto import tqdm


    budgets = sorted({int(b) for b in budgets})
    if not budgets:
        raise UsageError("a Pareto sweep needs at least one budget")
    engine = get_solver(solver, **(solver_options or {}))
    points: list[ParetoPoint] = []
    last = None  # the answer at the previous (larger) budget
    first_error: InfeasibleError | None = None
    for budget in tqdm(budgets[::-1], desc="pareto", unit="budget", disable=not progress):
        if last is not None and last.status == "optimal" and last.total_bytes <= budget:
            sol, reused = last, True
        else:
            try:
                sol, reused = engine.solve(problem.with_budget(budget)), False
            except InfeasibleError as exc:
                first_error = exc
                points.append(ParetoPoint(budget, None, None, "infeasible", 0.0, extra={"error": str(exc)}))
                continue
        last = sol
        counts = {f: int((sol.choice == i).sum()) for i, f in enumerate(problem.formats)}
        extra = {c.name: c.value(sol.choice) for c in problem.extra}
        points.append(ParetoPoint(budget, int(sol.total_bytes), float(sol.objective), sol.status,
                                  0.0 if reused else float(sol.seconds), {k: v for k, v in counts.items() if v},
                                  reused, extra=extra, choice=np.asarray(sol.choice)))
    points.reverse()
    if all(p.status == "infeasible" for p in points):
        raise first_error  # type: ignore[misc]
    frontier_flags(points)
    return points


def uniform_points(problem: Problem) -> dict[str, dict]:
    """Reference points: every layer in one format where it may take it, else the first (full-precision) format.

    Pins and tie groups are ignored (these are the plain uniform plans, not solver answers).
    """
    rows = np.arange(problem.n_layers)
    out = {}
    for f, name in enumerate(problem.formats):
        choice = np.where(problem.allowed[:, f], f, 0)
        if not problem.allowed[rows, choice].all():
            continue
        out[name] = {"total_bytes": problem.total_bytes(choice), "objective": problem.objective(choice)}
    return out


def write_frontier(points: list[ParetoPoint], folder: str | Path, *, uniform: dict | None = None, title: str = "",
                   meta: dict | None = None) -> dict:
    """Write ``frontier.csv``, ``frontier.json`` and ``frontier.png`` into ``folder``; return their paths."""

    folder = Path(folder)
    columns = ["budget_bytes", "total_bytes", "objective", "status", "on_frontier", "seconds", "reused", "formats",
               "plan"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for p in points:
        d = p.to_dict()
        writer.writerow([d[c] if c != "formats" else ";".join(f"{k}={v}" for k, v in d["formats"].items())
                         for c in columns])
    data = {**(meta or {}), "points": [p.to_dict() for p in points], "uniform": uniform or {}}
    paths = {"csv": atomic_write_bytes(folder / "frontier.csv", buf.getvalue().encode()),
             "json": atomic_write_bytes(folder / "frontier.json", json.dumps(data, indent=1, default=str).encode())}
    paths["png"] = atomic_write_bytes(folder / "frontier.png", _plot(points, uniform or {}, title))
    return {k: str(v) for k, v in paths.items()}


def _plot(points, uniform, title) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    solved = [p for p in points if p.total_bytes is not None]
    front = sorted((p for p in solved if p.on_frontier), key=lambda p: p.total_bytes)
    ax.plot([p.total_bytes / 1e3 for p in solved], [p.objective for p in solved], "o", color="0.7", ms=4,
            label="solved budgets")
    ax.plot([p.total_bytes / 1e3 for p in front], [p.objective for p in front], "-o", color="C0", ms=4,
            label="Pareto frontier")
    for i, (name, u) in enumerate(uniform.items()):
        ax.plot(u["total_bytes"] / 1e3, u["objective"], marker="s", ls="none", color=f"C{i + 1}",
                label=f"uniform {name}")
    positive = [p.objective for p in solved if p.objective > 0] + [u["objective"] for u in uniform.values()
                                                                  if u["objective"] > 0]
    if positive and max(positive) / max(min(positive), 1e-300) > 100:
        ax.set_yscale("symlog", linthresh=min(positive))
    ax.set_xlabel("denoiser bytes (KB)")
    ax.set_ylabel("predicted error (solver objective)")
    ax.set_title(title or "bytes vs predicted error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = io.BytesIO()
    fig.savefig(out, format="png", bbox_inches="tight")
    return out.getvalue()


def pareto(profile: Any, budgets: Any = None, *, n: int | None = None, solver: str | BaseSolver | None = None,
           out: str | Path | None = None, progress: bool = False, config: SolveConfig | None = None,
           **objective: Any) -> dict:
    """Sweep a profile over budgets (a list of budget specs or bytes, a ``start:stop:step`` string, or ``n``
    evenly spaced points) and, with ``out``, write the frontier files and one plan per solved budget.

    ``profile`` is a Profile, its path, or a :class:`~mpsearch.allocation.formulation.Formulation`; ``config``
    (a :class:`~mpsearch.allocation.config.SolveConfig`, its budget unused) and the ``objective`` keywords
    (``metric``, ``pins``, ``role_pins``, ``tie``, ``compute``, ``pipe``, ...) are
    :func:`~mpsearch.allocation.formulation.formulate`'s. ``solver``: a name or a solver instance (None: the
    config's). Returns
    ``{"points": [...], "uniform": {...}, "files": {...}}`` with the ParetoPoint objects under ``points``.
    """

    form = as_formulation(profile, None, "pareto", config=config, **objective)
    profile, problem, metric = form.profile, form.problem, form.metric
    info = profile.info
    kw = budget_keywords(info)
    if n is not None:
        if budgets is not None:
            raise UsageError("give either budgets or --pareto N, not both")
        byte_budgets = pareto_budgets(problem, n)
    elif isinstance(budgets, str):
        byte_budgets = budget_range(budgets, **kw) or [parse_budget(budgets, **kw).bytes]
    elif budgets:
        byte_budgets = [parse_budget(b, **kw).bytes for b in budgets]
    else:
        raise UsageError("a Pareto sweep needs budgets (START:STOP:STEP) or --pareto N")
    if solver is None:
        solver = DEFAULT_SOLVER if form.config is None else form.config.solver
    engine = get_solver(solver)
    points = sweep(problem, byte_budgets, solver=engine, progress=progress)
    # the plain formats' uniform plans: not the compute windows' columns, not the calibrated variants
    uniform = {k: v for k, v in uniform_points(problem).items() if k in profile.formats and ":" not in k}
    result = {"points": points, "uniform": uniform, "files": {}}
    if out is None:
        return result
    out = Path(out)
    for p in points:
        if p.choice is None:
            continue
        assert p.objective is not None and p.total_bytes is not None  # sweep sets them with the choice
        sol = Solution(p.choice, p.objective, p.total_bytes, p.status, engine.name, p.seconds)
        plan = form.with_budget(f"{p.budget_bytes}B").to_plan(
            sol, predictions={"formats": p.formats, **p.extra}, provenance={"sweep": True})
        path = out / "plans" / f"plan-{p.budget_bytes}B.yaml"
        plan.save(path)
        p.plan = str(path)
    solved = [p for p in points if p.total_bytes is not None]
    solved_bytes = [p.total_bytes for p in points if p.total_bytes is not None]
    meta = {"metric": metric, "solver": engine.name, "profile_digest": profile.digest, "fp_bytes": info.fp_bytes,
            "smallest_feasible_bytes": min(solved_bytes), "extra": [c.name for c in problem.extra]}
    title = f"{info.denoiser_class}: {len(solved)} budgets, {format_bytes(byte_budgets[0])} to " \
            f"{format_bytes(byte_budgets[-1])}"
    result["files"] = write_frontier(points, out, uniform=uniform, title=title, meta=meta)
    assert all(p.objective is not None and math.isfinite(p.objective) for p in solved)
    return result
