"""Pareto sweeps (array level and from a profile) and compute budgets with activation windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpsearch.allocation.pareto import budget_range, pareto_budgets, sweep, uniform_points
from mpsearch.allocation.solvers import Problem, get_solver, min_feasible_bytes
from mpsearch.errors import UsageError


def _problem():
    rng = np.random.default_rng(0)
    nbytes = (rng.integers(10, 40, size=(8, 1)) * np.array([16, 8, 4])).astype(np.int64)
    cost = rng.random((8, 3)) * np.array([0.0, 1.0, 4.0])
    return Problem(tuple(f"l{i}" for i in range(8)), ("fp", "int8", "int4"), cost, nbytes, fixed_bytes=50)


def test_budget_range_and_even_budgets():
    assert budget_range("400KB:500KB:50KB", fp_bytes=10**6) == [400_000, 450_000, 500_000]
    assert budget_range("60%", fp_bytes=10**6) is None
    with pytest.raises(UsageError, match="START:STOP:STEP"):
        budget_range("1KB:2KB", fp_bytes=1)
    with pytest.raises(UsageError, match="ends below its start"):
        budget_range("2KB:1KB:1B", fp_bytes=1)
    p = _problem()
    b = pareto_budgets(p, 5)
    assert b[0] == min_feasible_bytes(p) and b[-1] == p.fixed_bytes + int(p.nbytes[:, 0].sum()) and len(b) == 5


def test_sweep_matches_solving_each_budget_and_marks_the_frontier():
    p = _problem()
    budgets = [min_feasible_bytes(p) - 1, *pareto_budgets(p, 8)]
    points = sweep(p, budgets)
    assert points[0].status == "infeasible" and points[0].total_bytes is None
    for pt in points[1:]:
        alone = get_solver("bruteforce").solve(p.with_budget(pt.budget_bytes))
        assert pt.objective == pytest.approx(alone.objective, abs=1e-12)
        assert pt.total_bytes <= pt.budget_bytes
    objectives = [pt.objective for pt in points[1:]]
    assert objectives == sorted(objectives, reverse=True)  # a larger budget is never worse
    assert any(pt.on_frontier for pt in points)
    assert uniform_points(p)["fp"]["objective"] == 0.0


def test_cli_sweep_and_compute_on_a_tiny_profile(dit_pipe, tmp_path, monkeypatch, capsys):
    from mpsearch.allocation.compute import compute_problem, record_layer_calls
    from mpsearch.allocation.objective import build_problem
    from mpsearch.apps import cli
    from mpsearch.apps.profile import profile
    from mpsearch.plan import Plan
    from mpsearch.runtime.executor import apply_plan
    from mpsearch.runtime.generation import generate

    prof = profile(dit_pipe, out=tmp_path / "p.sqlite", steps=4, seeds=(0,), labels=(1, 2), progress=False)
    calls = record_layer_calls(dit_pipe, prof.info, steps=4, windows=2, formats=prof.formats[1:])
    assert (calls.macs > 0).all() and calls.windows == [(0, 2), (2, 4)]
    # Linear MACs per call = tokens x in x out: 16 tokens per image, 2 labels x 2 (CFG batch), 32 x 32 weights
    name = next(i for i, n in enumerate(prof.info.names) if n.endswith("attn1.to_q"))
    assert calls.macs[name] == 2 * 2 * 16 * 32 * 32
    base = build_problem(prof, None, role_pins={})
    cm = compute_problem(prof, base, calls, "30%")
    assert "int8[a16:0-2]" in cm.problem.formats and cm.limit == pytest.approx(0.3 * cm.full)
    sol = get_solver("cbc").solve(cm.problem)
    assert cm.value(sol.choice) <= cm.limit * (1 + 1e-9)
    assignment, overrides = cm.decode(sol.choice)
    # decoding by hand: a choice "fmt[a16:a-b]" is fmt's weights, with fp activations in steps a..b
    expected_fmt, expected_fp_acts = {}, {}
    for layer, c in zip(cm.problem.layer_names, sol.choice):
        fmt, _, windows = cm.problem.formats[c].partition("[a16:")
        expected_fmt[layer] = fmt
        for w in filter(None, windows.rstrip("]").split(",")):
            a, b = (int(v) for v in w.split("-"))
            expected_fp_acts.setdefault((a, b), set()).add(layer)
    assert assignment == expected_fmt and expected_fp_acts, "the 30% compute budget needs fp-activation windows"
    assert {tuple(o["steps"]): set(o["activations"]) for o in overrides} == expected_fp_acts
    assert all(v == "fp" for o in overrides for v in o["activations"].values())
    plan = Plan.from_assignment(prof.info, assignment, overrides=overrides, calibration=prof.calibration())

    def images(p):
        handle = apply_plan(dit_pipe, p, stash="memory")
        try:
            return generate(dit_pipe, [1, 2], 0, 4)
        finally:
            handle.remove()

    # the executor takes the overrides: the same formats without them give other images
    assert not np.array_equal(images(plan), images(Plan.from_assignment(prof.info, assignment,
                                                                        calibration=prof.calibration())))

    monkeypatch.setattr("mpsearch.apps.pipeline.load_pipeline", lambda *a, **k: dit_pipe)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["solve", "--profile", "p.sqlite", "--pareto", "4", "--role-pins", "none", "--out", "sweep",
                     "--compute", "50%", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(out)
    assert len(data["points"]) == 4 and all(p["plan"] for p in data["points"])
    for ext in ("csv", "json", "png"):
        assert (tmp_path / "sweep" / f"frontier.{ext}").stat().st_size > 0
    # uniform plans by hand: each layer in the format where eligible, else in fp; fp is the whole model
    assert set(data["uniform"]) == {"fp", "int8", "nvfp4", "int4"}
    for f, u in data["uniform"].items():
        size = prof.info.fixed_bytes + sum(l.nbytes(f if f in l.eligible else "fp") for l in prof.info.layers)
        assert u["total_bytes"] == size and (u["objective"] == 0) == (f == "fp")
    assert data["uniform"]["fp"]["total_bytes"] == prof.info.fp_bytes
    assert all(p["extra"]["compute"] <= 0.5 + 1e-9 for p in data["points"])
