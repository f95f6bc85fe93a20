"""SolveConfig (one validated value for every solve path) and the solve path's reliability: partial profiles,
per-layer step weights in provenance (the joint solve), numbers checked before any work."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mpsearch
from mpsearch.allocation.formulation import formulate
from mpsearch.allocation.joint import solve_joint
from mpsearch.allocation.pareto import pareto
from mpsearch.apps import cli
from mpsearch.apps.profile import profile
from mpsearch.errors import BudgetError, MpsearchError, ProfileError, UsageError
from mpsearch.plan import Plan


@pytest.fixture
def prof(dit_pipe, tmp_path):
    return profile(dit_pipe, out=tmp_path / "p.sqlite", steps=4, seeds=(0,), labels=(1, 2), progress=False)


@pytest.fixture
def half(dit_pipe, tmp_path):
    """One shard of two: unit 0 (seed 0) measured, unit 1 (seed 7) not."""
    return profile(dit_pipe, out=tmp_path / "half.sqlite", steps=4, seeds=(0, 7), labels=(1,), shard=(0, 2),
                   progress=False)


# ------------------------------------------------------------------------------------------ SolveConfig


def test_config_and_keywords_make_the_same_plan(prof):
    from mpsearch.allocation import SolveConfig

    assert mpsearch.SolveConfig is SolveConfig
    cfg = SolveConfig(budget="60%", tie=True, pins=("proj_out=int8",), solver="highs")
    by_config = mpsearch.solve(prof, config=cfg)
    by_keywords = mpsearch.solve(prof, budget="60%", tie=True, pins=["proj_out=int8"], solver="highs")
    assert by_config.layers == by_keywords.layers and by_config.provenance["solver"] == "highs"
    # keywords beside a config replace its fields; the config itself is frozen
    assert mpsearch.solve(prof, config=cfg, budget="80%").budget["spec"] == "80%"
    with pytest.raises(AttributeError):
        cfg.tie = False  # type: ignore[misc]
    # pareto, the joint solve and refine take the same config
    assert pareto(prof, n=3, config=cfg.replace(budget=None))["points"]
    assert formulate(prof, config=cfg).config == cfg


@pytest.mark.parametrize("keywords, needle", [
    (dict(budget=math.nan), "is not a finite positive number"),
    (dict(budget="nanGB"), "does not parse"),
    (dict(budget="-5%"), "must be a positive size"),
    (dict(budget="1e400B"), "is not a finite positive number"),
    (dict(objective_weights="content=nan"), "must be a finite number"),
    (dict(objective_weights={"content": math.inf}), "must be a finite number"),
    (dict(step_weights=[1, math.nan, 1, 1]), "step_weights must be"),
    (dict(step_weights=[1, -1, 1, 1]), "step_weights must be"),
    (dict(max_damage=math.nan), "max_damage must be a number in (0, 1]"),
    (dict(max_damage=-0.5), "max_damage must be a number in (0, 1]"),
    (dict(fp_act_windows=-1), "fp_act_windows must be an integer >= 0"),
    (dict(compute="50%", act_windows=0), "act_windows must be an integer >= 1"),
    (dict(compute="1e400"), "not a finite number"),
    (dict(compute="50%", compute_cost="flops"), "compute_cost must be one of bops, latency"),
    (dict(tie="yes"), "tie must be True or False"),
    (dict(weights="content=1"), "unknown keyword(s) weights"),
])
def test_bad_numbers_are_one_line_errors_before_any_work(prof, dit_pipe, keywords, needle):
    keywords = {"budget": "60%", **keywords}
    with pytest.raises(UsageError) as e:
        mpsearch.solve(prof, pipe=dit_pipe, **keywords)
    assert needle in str(e.value) and "\n" not in str(e.value)
    if needle.startswith(("must be a positive", "does not", "is not a finite")):
        assert isinstance(e.value, BudgetError)


# ------------------------------------------------------------------------------------------ partial profiles


def test_a_partial_profile_is_refused_unless_allowed(half):
    with pytest.raises(ProfileError, match=r"1 of 2 units measured \(missing unit 1 \(seed 7\)\).*"
                                           r"--allow-partial"):
        mpsearch.solve(half, budget="60%")
    with pytest.raises(ProfileError, match="missing unit"):
        pareto(half, n=3)
    plan = mpsearch.solve(half, budget="60%", allow_partial=True)
    assert plan.predicted_bytes <= plan.budget["bytes"]


def test_cli_refuses_a_partial_profile(half, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["solve", "--profile", "half.sqlite", "--budget", "60%", "--out", "p.yaml"]) == 1
    err = capsys.readouterr().err
    assert "missing unit 1 (seed 7)" in err and err.count("\n") == 1
    assert not (tmp_path / "p.yaml").exists()
    assert cli.main(["solve", "--profile", "half.sqlite", "--budget", "60%", "--out", "p.yaml",
                     "--allow-partial"]) == 0
    assert Plan.load(tmp_path / "p.yaml").layers


# ------------------------------------------------------------------------------------------ per-layer step weights


@pytest.mark.parametrize("which", ["dit", "unet"])
def test_per_layer_step_weights_reach_the_plan(which, dit_pipe, unet_pipe, tmp_path):
    """The joint solve's second round weights each layer's steps by the cache schedule (a (layers, steps)
    array); the plan's provenance used to turn every row into a float and crash."""
    pipe = dit_pipe if which == "dit" else unet_pipe
    p = profile(pipe, out=tmp_path / f"{which}.sqlite", steps=4, seeds=(0,), labels=(1,), progress=False)
    weights = np.ones((len(p.info.layers), p.steps))
    weights[::2, 1:] = 0.0
    form = formulate(p, "60%", step_weights=weights)
    plan = form.to_plan(form.solve())
    record = plan.provenance["step_weights"]
    assert record["shape"] == [len(p.info.layers), p.steps] and len(record["sha256"]) == 16
    one_d = formulate(p, "60%", step_weights=[1, 2, 3, 4])
    assert one_d.to_plan(one_d.solve()).provenance["step_weights"] == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("which", ["dit", "unet"])
def test_joint_solve_when_round_two_changes_formats(which, dit_pipe, unet_pipe, tmp_path, monkeypatch):
    """When the schedule's usage weights change the formats in round 2 (as at uniform INT8's bytes on the
    default UNet), that round's plan records (layers, steps) step weights: that crashed (TypeError in the
    provenance). The reuse costs are stood in for (a seeded matrix) so only the solve/schedule rounds run."""
    from mpsearch.allocation.solvers import min_feasible_bytes

    pipe = dit_pipe if which == "dit" else unet_pipe
    # round-to-nearest candidates: the seeded costs below were chosen so that round 2 changes those formats
    p = profile(pipe, out=tmp_path / f"{which}.sqlite", steps=6, seeds=(0,), labels=(1,), progress=False,
                variants="none")
    cost = np.triu(np.random.default_rng(0).uniform(0.1, 1.0, (6, 6)), 1)
    monkeypatch.setattr("mpsearch.allocation.joint.measure_costs", lambda *a, **k: cost)
    low = min_feasible_bytes(formulate(p, role_pins={}).problem)
    budget = int(low + 0.4 * (p.info.fp_bytes - low))  # one where round 2 changes the formats on both
    plan = solve_joint(p, pipe, budget, full_computations=3, warmup=1, rounds=3, role_pins={})
    assert plan.predicted_bytes <= budget and sum(plan.cache["compute"]) == 3
    rounds = plan.provenance["cache_rounds"]
    assert len(rounds) >= 2 and rounds[0]["formats"] != rounds[1]["formats"]  # the case that crashed
    assert plan.provenance["step_weights"] == "cache schedule usage (see cache_rounds)"
    with pytest.raises(UsageError, match=r"full computations \(cache steps\) must be an integer in 1..6"):
        solve_joint(p, pipe, budget, full_computations=0, role_pins={})
    with pytest.raises(UsageError, match="solve_joint takes the local objective only"):
        solve_joint(p, pipe, budget, full_computations=3, step_weights=np.ones(6))
    with pytest.raises(UsageError, match="speedup must be a number >= 1"):
        solve_joint(p, pipe, budget, speedup=math.nan, role_pins={})


def test_errors_are_mpsearch_errors():
    assert issubclass(UsageError, MpsearchError) and issubclass(ProfileError, MpsearchError)


@pytest.mark.parametrize("options, needle", [
    (dict(seeds=(500, 500)), "search seeds must be distinct integers >= 0"),
    (dict(seeds=(-1,)), "search seeds must be distinct integers >= 0"),
    (dict(validation_seeds=(501, 501)), "validation seeds must be distinct integers >= 0"),
    (dict(steps=0), "search steps must be an integer >= 1"),
])
def test_refine_checks_its_seeds_and_steps(prof, dit_pipe, options, needle):
    from mpsearch.allocation.refine import refine

    with pytest.raises(UsageError, match=needle):
        refine(prof, dit_pipe, "60%", trials=1, labels=(1,), **options)
