"""Feasibility of a :class:`~mpsearch.allocation.solvers.problem.Problem`, without searching: the smallest reachable
size, every way an assignment breaks the constraints, and the per-decision resource tables heuristics walk.

:func:`min_feasible_bytes` is what infeasible-budget errors quote; :func:`check_assignment` is the check every
solver's answer passes before it is returned; :func:`resource_tables` gives heuristics the byte budget and the
extra constraints as one stack of (use, limit) rows. Extra constraints hold up to float round-off
(:func:`extra_tolerance`), the byte budget exactly.
"""

from __future__ import annotations

import numpy as np

from mpsearch.allocation.solvers.problem import Problem

__all__ = ["check_assignment", "min_feasible_bytes", "resource_tables"]


def extra_tolerance(rhs: float, coef_scale: float) -> float:
    """How far over its limit an extra constraint may be and still count as kept (float round-off only)."""
    return 1e-9 * max(1.0, abs(rhs), coef_scale)


def resource_tables(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Per-decision resource use and limits for heuristics: ``(use (R, D, F), caps (R,))``, one row for the
    byte budget (net of fixed bytes, if any) and one per extra constraint (with half its round-off tolerance)."""
    dec = problem.decisions
    tables, caps = [], []
    if problem.budget_bytes is not None:
        tables.append(dec.nbytes.astype(np.float64))
        caps.append(float(problem.budget_bytes - problem.fixed_bytes))
    for k, con in enumerate(problem.extra):
        scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
        tables.append(dec.extra[k])
        caps.append(con.rhs + extra_tolerance(con.rhs, scale) / 2)
    if not tables:
        return np.zeros((0,) + dec.allowed.shape), np.zeros(0)
    return np.stack(tables), np.array(caps)



def min_feasible_bytes(problem: Problem) -> int:
    """The smallest total bytes any assignment can reach that keeps eligibility, pins and tie groups.

    Exact: per decision (tie group or single layer) the fewest bytes over the formats every member may take.
    ``extra`` constraints are ignored.
    """
    dec = problem.decisions
    return problem.fixed_bytes + int(dec.nbytes[np.arange(dec.count), dec.smallest()].sum())


def check_assignment(problem: Problem, choice: np.ndarray) -> list[str]:
    """Every way ``choice`` (one format index per layer) breaks ``problem``; empty when it keeps them all."""
    choice = np.asarray(choice)
    if choice.shape != (problem.n_layers,):
        return [f"choice has shape {choice.shape}, expected ({problem.n_layers},)"]
    if choice.size and not np.issubdtype(choice.dtype, np.integer):
        return [f"choice must hold integer format indices, got dtype {choice.dtype}"]
    out_of_range = (choice < 0) | (choice >= problem.n_formats)
    if out_of_range.any():
        bad = int(np.flatnonzero(out_of_range)[0])
        return [f"layer {problem.layer_names[bad]!r} has format index {int(choice[bad])}, "
                f"not in [0, {problem.n_formats})"]
    problems: list[str] = []
    rows = np.arange(problem.n_layers)
    for row in np.flatnonzero(~problem.allowed[rows, choice]):
        problems.append(
            f"layer {problem.layer_names[row]!r} takes {problem.formats[choice[row]]!r}, which it may not take")
    for l, f in problem.pins.items():
        if choice[l] != f:
            problems.append(
                f"layer {problem.layer_names[l]!r} is pinned to {problem.formats[f]!r} but takes "
                f"{problem.formats[choice[l]]!r}"
            )
    for gi, group in enumerate(problem.groups):
        taken = {int(choice[l]) for l in group}
        if len(taken) > 1:
            problems.append(f"tie group {gi} mixes formats {sorted(problem.formats[f] for f in taken)}")
    if problem.budget_bytes is not None:
        total = problem.total_bytes(choice)
        if total > problem.budget_bytes:
            problems.append(f"total {total:,} B is over the budget {problem.budget_bytes:,} B")
    for con in problem.extra:
        value = con.value(choice)
        scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
        if value > con.rhs + extra_tolerance(con.rhs, scale):
            problems.append(f"extra constraint {con.name!r} is {value:.10g}, over its limit {con.rhs:.10g}")
    return problems
