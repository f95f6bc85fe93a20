"""The one formulation path: every caller (solve, Pareto, joint, refine, CLI) goes through it and gives the same
plan and provenance for the same inputs; solver instances, compute budgets from Python, deprecated spellings."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mpsearch
from mpsearch.allocation import formulation as formulation_mod
from mpsearch.allocation.formulation import Formulation, formulate
from mpsearch.allocation.joint import solve_joint
from mpsearch.allocation.pareto import pareto
from mpsearch.allocation.solvers import CbcSolver, HighsSolver, get_solver
from mpsearch.apps import cli
from mpsearch.apps.cli.parser import build_parser
from mpsearch.apps.profile import profile
from mpsearch.errors import UsageError
from mpsearch.plan import Plan

SAME = ("solver", "metric", "tie", "pins", "role_pins", "step_weights", "profile_digest", "profile_config")


@pytest.fixture
def prof(dit_pipe, tmp_path):
    return profile(dit_pipe, out=tmp_path / "p.sqlite", steps=4, seeds=(0,), labels=(1, 2), progress=False)


def _budget(prof) -> int:
    """A budget between uniform int8 and int4 (it binds, so the solver has to choose)."""
    info = prof.info
    int8 = info.bytes_for({l.name: "int8" if "int8" in l.eligible else "fp" for l in info.layers})
    int4 = info.bytes_for({l.name: "int4" if "int4" in l.eligible else "fp" for l in info.layers})
    return (int8 + int4) // 2


@pytest.fixture
def spy(monkeypatch):
    """Counts the plans made by Formulation.to_plan (the one place plans are made from solver answers)."""
    calls = []
    original = Formulation.to_plan

    def to_plan(self, solution, **kw):
        calls.append(self)
        return original(self, solution, **kw)

    monkeypatch.setattr(Formulation, "to_plan", to_plan)
    return calls


def test_every_caller_gives_the_same_plan_through_one_formulation(prof, dit_pipe, tmp_path, monkeypatch, capsys, spy):
    b = _budget(prof)
    pins = ["proj_out=fp"]
    direct = mpsearch.solve(prof, f"{b}B", role_pins={}, pins=pins)
    assert len(spy) == 1 and direct.provenance["role_pins"] == {} and direct.provenance["pins"] == {"proj_out": "fp"}

    swept = pareto(prof, [b], role_pins={}, pins=pins, out=tmp_path / "sweep")
    assert len(spy) == 2
    point = Plan.load(swept["points"][0].plan)

    monkeypatch.chdir(tmp_path)
    code = cli.main(["solve", "--profile", "p.sqlite", "--budget", f"{b}B", "--role-pins", "none", "--pins",
                     "proj_out=fp", "--out", "cli.yaml", "--json"])
    assert code == 0 and len(spy) == 3
    assert json.loads(capsys.readouterr().out)["plan"] == "cli.yaml"
    from_cli = Plan.load(tmp_path / "cli.yaml")

    monkeypatch.setattr("mpsearch.allocation.joint.measure_costs",  # no generation: a cost that reuses nothing well
                        lambda pipe, unit, steps, **kw: np.ones((steps, steps)))
    joint = solve_joint(prof, dit_pipe, f"{b}B", full_computations=3, rounds=1, role_pins={}, pins=pins)
    assert len(spy) == 4

    for plan in (point, from_cli, joint):
        assert plan.layers == direct.layers and plan.budget == direct.budget
        assert plan.predictions["objective"] == pytest.approx(direct.predictions["objective"], rel=1e-12)
        assert {k: plan.provenance[k] for k in SAME} == {k: direct.provenance[k] for k in SAME}
    assert point.provenance["sweep"] is True and joint.cache is not None


def test_solver_by_instance(prof):
    b = f"{_budget(prof)}B"
    by_name = mpsearch.solve(prof, b, role_pins={}, solver="highs")
    by_instance = mpsearch.solve(prof, b, role_pins={}, solver=HighsSolver(time_limit=30))
    assert by_instance.layers == by_name.layers and by_instance.provenance["solver"] == "highs"
    ilp = mpsearch.solve(prof, b, role_pins={}, solver=CbcSolver(time_limit=30))
    assert ilp.provenance["solver"] == "cbc"
    assert ilp.predictions["objective"] == pytest.approx(by_name.predictions["objective"], abs=1e-9)
    with pytest.raises(UsageError, match="already built"):
        get_solver(CbcSolver(), time_limit=5)


def test_compute_budget_from_python_matches_the_cli(prof, dit_pipe, tmp_path, monkeypatch, capsys):
    plan = mpsearch.solve(prof, "80%", compute="50%", pipe=dit_pipe, role_pins={})
    assert plan.predictions["compute_cost"] == "bops" and plan.predictions["compute_share"] <= 0.5 + 1e-9
    assert plan.provenance["compute"] == "50%" and plan.provenance["compute_cost"] == "bops"
    assert plan.provenance["role_pins"] == {}  # the provenance the CLI's compute path used to drop
    monkeypatch.setattr("mpsearch.apps.pipeline.load_pipeline", lambda *a, **k: dit_pipe)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["solve", "--profile", "p.sqlite", "--budget", "80%", "--compute", "50%", "--role-pins", "none",
                     "--out", "c.yaml", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    from_cli = Plan.load(tmp_path / "c.yaml")
    assert from_cli.layers == plan.layers and from_cli.overrides == plan.overrides
    assert data["compute"]["predicted"] == pytest.approx(plan.predictions["compute_bops"])
    with pytest.raises(UsageError, match="pipe="):
        formulate(prof, "80%", compute="50%")
    with pytest.raises(UsageError, match="no latency table"):
        formulate(prof, "80%", compute="50%", compute_cost="latency", pipe=dit_pipe)
    with pytest.raises(UsageError, match="compute_cost"):
        formulate(prof, "80%", compute="50%", compute_cost="flops", pipe=dit_pipe)


def test_budget_keywords_are_parsed_in_one_place(prof, monkeypatch):
    seen = []
    real = formulation_mod.parse_budget
    monkeypatch.setattr(formulation_mod, "parse_budget", lambda spec, **kw: seen.append(kw) or real(spec, **kw))
    form = formulate(prof, "60%", role_pins={})
    info = prof.info
    assert seen == [dict(fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes,
                         quantizable_numel=info.quantizable_numel)]
    assert form.budget.bytes == int(0.6 * info.fp_bytes) or abs(form.budget.bytes - 0.6 * info.fp_bytes) <= 1


def test_removed_spellings_are_clear_errors(prof, tmp_path, monkeypatch, capsys):
    """The deprecated keyword and flags are gone (no release had them): each is a one-line error."""
    with pytest.raises(UsageError, match=r"solve\(\) got unknown keyword\(s\) weights; valid: budget, metric"):
        mpsearch.solve(prof, "60%", weights="content=1")
    monkeypatch.chdir(tmp_path)
    for flag in (["--no-default-pins"], ["--cache-steps", "3"], ["--weights", "content=1"]):
        assert cli.main(["solve", "--profile", "p.sqlite", "--budget", "60%", *flag]) == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" in err and err.count("\n") == 1
    new = build_parser().parse_args(["solve", "--budget", "1B", "--pins", "a=fp", "--role-pins", "none",
                                     "--full-computations", "3", "--objective-weights", "content=1"])
    assert (new.pins, new.role_pins, new.full_computations, new.objective_weights) == (["a=fp"], "none", 3,
                                                                                        "content=1")


def test_rounds_default_is_the_same_on_both_sides():
    import inspect

    default = inspect.signature(solve_joint).parameters["rounds"].default
    assert build_parser().parse_args(["solve", "--budget", "1B"]).rounds == default == 2


def test_role_pins_flag_reads_roles():
    from mpsearch.apps.cli.solving import parse_role_pins

    assert parse_role_pins("none") == {} and parse_role_pins("default") is None and parse_role_pins(None) is None
    assert parse_role_pins("time_embed=fp,modulation=int8") == {"time_embed": "fp", "modulation": "int8"}
    with pytest.raises(UsageError, match="ROLE=FORMAT"):
        parse_role_pins("wings=fp")
