"""solve --search optuna end to end on a tiny DiT: real generations, a local study file that resumes."""

from __future__ import annotations

import json

import pytest

from mpsearch.apps import cli
from mpsearch.plan import Plan


def test_search_optuna_refines_and_resumes(dit_pipe, tmp_path, monkeypatch, capsys):
    from mpsearch.apps.profile import profile

    profile(dit_pipe, out=tmp_path / "p.sqlite", steps=3, seeds=(0,), labels=(1, 2), progress=False)
    monkeypatch.setattr("mpsearch.apps.pipeline.load_pipeline", lambda *a, **k: dit_pipe)
    monkeypatch.chdir(tmp_path)
    argv = ["solve", "--profile", "p.sqlite", "--budget", "45%", "--role-pins", "none", "--search", "optuna",
            "--search-steps", "2", "--json"]
    assert cli.main([*argv, "--trials", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["search"]["trials"] == 3 and first["search"]["storage"] == "sqlite:///studies/p.db"
    assert (tmp_path / "studies" / "p.db").is_file()
    assert cli.main([*argv, "--trials", "5"]) == 0  # the same study, continued to 5 trials
    again = json.loads(capsys.readouterr().out)
    assert again["search"]["trials"] == 5 and again["search"]["study_name"] == first["search"]["study_name"]
    plan = Plan.load(again["plan"])
    assert plan.provenance["solver"] == "optuna" and plan.predicted_bytes <= plan.budget["bytes"]


def _refine_with_scores(dit_pipe, tmp_path, monkeypatch, validation_favours_pick: bool):
    """refine() with stand-in scores: the search seed favours plans with more int4 layers than the ILP's
    (so the pick is not the ILP's), the validation seed favours the pick or the ILP's plan as asked."""
    import numpy as np

    import mpsearch.allocation.refine as refine_mod
    from mpsearch.allocation.objective import build_problem
    from mpsearch.allocation.solvers import get_solver
    from mpsearch.apps.profile import profile

    # plain formats: the stand-in scores count int4 layers, and refine's validation is what is under test
    prof = profile(dit_pipe, out=tmp_path / "p.sqlite", steps=2, seeds=(0,), labels=(1,), progress=False,
                   variants="none")
    problem = build_problem(prof, int(0.45 * prof.info.fp_bytes), role_pins={})
    ilp = get_solver("cbc").solve(problem).choice
    int4 = problem.formats.index("int4")

    def fake(pipe, info, prob, *, seeds, **kw):
        def evaluate(choice):
            far = float(np.sum(np.asarray(choice) == int4) - np.sum(ilp == int4))  # > 0: more int4 than the ILP
            if seeds == refine_mod.SEARCH_SEEDS:
                return {"content": 1.0 / (2.0 + far), "quality": 1.0 / (2.0 + far)}
            assert kw.get("per_image"), "validation must score each image"
            good = far > 0 if validation_favours_pick else far == 0 and np.array_equal(choice, ilp)
            value = 0.5 if good else 1.0
            per = np.full(8, value) + np.linspace(0.0, 0.01, 8)  # 8 images; the pair differs on every one
            return {"content": value, "quality": value, "per_image": {"content": per, "quality": per}}
        return evaluate

    monkeypatch.setattr(refine_mod, "evaluation_objective", fake)
    plan, report = refine_mod.refine(prof, dit_pipe, "45%", trials=12, role_pins={}, labels=(1,), steps=2)
    return plan, report, problem, ilp


def test_refine_keeps_the_ilp_plan_when_the_pick_fails_validation(dit_pipe, tmp_path, monkeypatch):
    plan, report, problem, ilp = _refine_with_scores(dit_pipe, tmp_path, monkeypatch, validation_favours_pick=False)
    assert report["chosen"]["trial"] != report["reference"]["trial"]
    assert report["validation"]["kept"] == "ilp" and report["validation"]["score_vs_ilp"] >= 1.0
    assert [plan.layers[n] for n in problem.layer_names] == [problem.formats[c] for c in ilp]
    assert plan.predictions["search"]["validation"]["kept"] == "ilp"


def test_refine_keeps_a_pick_that_passes_validation(dit_pipe, tmp_path, monkeypatch):
    plan, report, problem, ilp = _refine_with_scores(dit_pipe, tmp_path, monkeypatch, validation_favours_pick=True)
    assert report["validation"]["kept"] == "search" and report["validation"]["score_vs_ilp"] < 1.0
    assert report["validation"]["p_value"] < 0.05 and report["validation"]["images"] == 8
    assert [plan.layers[n] for n in problem.layer_names] != [problem.formats[c] for c in ilp]


def test_validate_pick_needs_a_paired_advantage_not_just_a_lower_mean():
    import numpy as np

    from mpsearch.allocation.refine import validate_pick

    def scores(content, quality=None):
        quality = content if quality is None else quality
        return {"per_image": {"content": np.asarray(content, float), "quality": np.asarray(quality, float)}}

    base = scores(np.linspace(1.0, 2.0, 12))
    better = validate_pick(scores(np.linspace(1.0, 2.0, 12) * 0.9), base)  # 10% better on every image
    assert better["kept"] == "search" and better["p_value"] < 0.05 and np.isclose(better["score_vs_ilp"], 0.9)
    # one image much better, the other 11 slightly worse: a lower mean, but no consistent advantage
    one_off = np.linspace(1.0, 2.0, 12) * 1.02
    one_off[0] = 0.0
    lucky = validate_pick(scores(one_off), base)
    assert lucky["score_vs_ilp"] < 1.0 and lucky["kept"] == "ilp" and lucky["p_value"] > 0.05
    same = validate_pick(base, base)
    assert same == {"score_vs_ilp": 1.0, "p_value": 1.0, "images": 12, "kept": "ilp"}
    worse = validate_pick(scores(np.linspace(1.0, 2.0, 12) * 1.1), base)
    assert worse["kept"] == "ilp" and worse["score_vs_ilp"] > 1.0


def test_evaluation_objective_per_image_scores_average_to_the_totals(dit_pipe, tmp_path):
    """Each per-image score is that image's own 1 - SSIM and MSE / reference power, recomputed here from images
    generated apart from the objective; their means are the totals the whole-batch objective reports."""
    import numpy as np

    from mpsearch.allocation.objective import build_problem
    from mpsearch.allocation.refine import evaluation_objective
    from mpsearch.allocation.solvers import get_solver
    from mpsearch.apps.profile import profile
    from mpsearch.metrics import ssim
    from mpsearch.runtime.executor import apply_plan
    from mpsearch.runtime.generation import generate

    # plain formats: the stand-in scores count int4 layers, and refine's validation is what is under test
    prof = profile(dit_pipe, out=tmp_path / "p.sqlite", steps=2, seeds=(0,), labels=(1,), progress=False,
                   variants="none")
    problem = build_problem(prof, int(0.45 * prof.info.fp_bytes), role_pins={})
    choice = get_solver("cbc").solve(problem).choice
    kw = dict(labels=(1, 2), seeds=(7, 8), steps=2, calibration=prof.calibration())
    out = evaluation_objective(dit_pipe, prof.info, problem, per_image=True, **kw)(choice)
    whole = evaluation_objective(dit_pipe, prof.info, problem, **kw)(choice)

    ref = np.concatenate([generate(dit_pipe, [1, 2], s, 2) for s in (7, 8)]).astype(np.float64)
    plan = Plan.from_assignment(prof.info, {n: problem.formats[c] for n, c in zip(problem.layer_names, choice)},
                                calibration=prof.calibration())
    with apply_plan(dit_pipe, plan, stash="memory", ignore_weights=True):
        img = np.concatenate([generate(dit_pipe, [1, 2], s, 2) for s in (7, 8)]).astype(np.float64)
    power = np.mean(ref ** 2)
    quality = [np.mean((img[i] - ref[i]) ** 2) / power for i in range(4)]
    content = [1.0 - ssim(ref[i : i + 1], img[i : i + 1]) for i in range(4)]
    np.testing.assert_allclose(out["per_image"]["quality"], quality, rtol=1e-5)
    np.testing.assert_allclose(out["per_image"]["content"], content, rtol=1e-5, atol=1e-7)
    assert np.ptp(quality) > 0  # the images differ, so a mix-up of their order would show
    assert out["quality"] == pytest.approx(whole["quality"], rel=1e-5) and whole["quality"] > 0
    assert out["content"] == pytest.approx(whole["content"], rel=1e-5, abs=1e-7)
