"""The Optuna search solver beyond the shared conformance suite: seeding, non-additive objectives, storage."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.allocation.solvers import NoSolutionFoundError, Problem, get_solver, min_feasible_bytes
from mpsearch.errors import UsageError


def _problem(n=6, budget_share=0.5):
    rng = np.random.default_rng(1)
    nbytes = (rng.integers(10, 40, size=(n, 1)) * np.array([16, 8, 4])).astype(np.int64)
    cost = rng.random((n, 3)) * np.array([0.0, 1.0, 4.0])
    p = Problem(tuple(f"l{i}" for i in range(n)), ("fp", "int8", "int4"), cost, nbytes)
    lo, hi = min_feasible_bytes(p), int(nbytes[:, 0].sum())
    return p.with_budget(int(lo + budget_share * (hi - lo)))


def test_seeded_search_never_does_worse_than_the_ilp_on_its_own_objective():
    problem = _problem()

    def interacting(choice):  # layers 0 and 1 in 4-bit together hurt far more than the sum says
        base = problem.objective(choice)
        return base + (10.0 if choice[0] == 2 and choice[1] == 2 else 0.0)

    ilp = get_solver("cbc").solve(problem)
    solver = get_solver("optuna", trials=25, evaluate=interacting)
    sol = solver.solve(problem)
    assert sol.total_bytes <= problem.budget_bytes
    assert interacting(sol.choice) <= interacting(ilp.choice)
    rep = solver.report
    assert rep["reference"]["source"] == f"cbc@{problem.budget_bytes}"
    assert rep["chosen"]["score_vs_reference"] <= 1.0
    assert rep["trials"] == 25


def test_infeasible_proposals_are_not_evaluated_and_multi_objective_needs_a_mapping():
    problem = _problem(budget_share=0.1)
    calls = []

    def evaluate(choice):
        calls.append(problem.total_bytes(choice))
        return {"content": problem.objective(choice), "quality": float(choice.sum())}

    solver = get_solver("optuna", trials=12, evaluate=evaluate, objectives=("content", "quality"), sampler="tpe")
    solver.solve(problem)
    assert calls and all(b <= problem.budget_bytes for b in calls)
    assert solver.report["objectives"] == ["bytes", "content", "quality"]
    bad = get_solver("optuna", trials=2, evaluate=lambda c: 1.0, objectives=("content", "quality"))
    with pytest.raises(UsageError, match="return a mapping"):
        bad.solve(problem)


def test_unseeded_search_gives_up_rather_than_break_the_budget():
    problem = _problem(n=8, budget_share=0.0)  # only the smallest assignment fits
    try:
        sol = get_solver("optuna", trials=3, seed_solver=None).solve(problem)
    except NoSolutionFoundError as exc:
        assert "--trials" in str(exc)
    else:
        assert sol.total_bytes <= problem.budget_bytes


def test_a_stored_study_resumes_without_repeating_seeds(tmp_path):
    problem = _problem()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = get_solver("optuna", trials=5, storage=url)
    a = first.solve(problem)
    assert first.report["trials"] == 5
    again = get_solver("optuna", trials=9, storage=url)
    b = again.solve(problem)
    assert again.report["trials"] == 9 and again.report["study_name"] == first.report["study_name"]
    sources = [t.user_attrs.get("source") for t in again.study.trials if t.user_attrs.get("source")]
    assert len(sources) == len(set(sources))  # every seed once
    assert problem.objective(b.choice) <= problem.objective(a.choice) + 1e-12


@pytest.mark.parametrize("options, message", [
    (dict(trials=0), "trials must be an integer >= 1"),
    (dict(sampler="cmaes"), "sampler must be one of nsga2, tpe"),
    (dict(objectives=("bytes",)), "objectives must be non-empty names other than 'bytes'"),
    (dict(weights=(1.0, 2.0)), "weights must be 1 finite numbers"),
    (dict(seed_solver="simplex"), "unknown solver 'simplex'"),
    (dict(storage=3), "storage must be an SQLAlchemy URL"),
])
def test_options_are_checked(options, message):
    with pytest.raises(UsageError, match=message):
        get_solver("optuna", **options)


def test_random_baseline_fills_the_budget_and_depends_on_its_seed():
    problem = _problem(n=12)
    a, b = get_solver("random", seed=0).solve(problem), get_solver("random", seed=1).solve(problem)
    assert a.total_bytes <= problem.budget_bytes and b.total_bytes <= problem.budget_bytes
    assert np.array_equal(a.choice, get_solver("random", seed=0).solve(problem).choice)
    # no single layer could move to a larger format and still fit: the budget is used
    dec = problem.decisions
    for d in range(dec.count):
        f = a.choice[d]
        slack = problem.budget_bytes - a.total_bytes
        assert not any(problem.nbytes[d, g] > problem.nbytes[d, f] and problem.nbytes[d, g] - problem.nbytes[d, f] <= slack
                       for g in range(problem.n_formats))
