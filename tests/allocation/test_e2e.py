"""End-to-end tier: measurement, storage and resume, cheap selection, the decoupled solve, plugins, the CLI."""

import json
import shutil
import sqlite3

import numpy as np
import pytest

import mpsearch
from mpsearch.allocation import decoupled as e2e
from mpsearch.apps.cli import main
from mpsearch.errors import ProfileError, UsageError
from mpsearch.formats import get_format
from mpsearch.profiling import endtoend as measured
from mpsearch.profiling.store import Profile

SMALL = dict(labels=(0, 1, 2), seeds=(0,), steps=4, progress=False)



def _ranks(values) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (as Spearman's rho needs)."""
    values = list(values)
    return np.array([sum(w < v for w in values) + (sum(w == v for w in values) + 1) / 2 for v in values])


@pytest.fixture(scope="module")
def e2e_profile(tmp_path_factory):
    """A tiny DiT profiled locally and end to end (shortlist 4, 2 windows), with plugins that record calls."""
    from conftest import _scheduler, tiny_dit

    from mpsearch.apps.pipeline import DigitsPipeline

    pipe = DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit())
    pipe.set_progress_bar_config(disable=True)
    calls = {"scorer": 0, "features": 0}

    def scorer(images, conditions):
        calls["scorer"] += 1
        assert len(images) == len(conditions)
        return images.reshape(len(images), -1).mean(1)  # any per-image score

    def features(images):
        calls["features"] += 1
        return images.reshape(len(images), -1)[:, :8]

    path = tmp_path_factory.mktemp("e2e") / "p.sqlite"
    prof = mpsearch.profile(pipe, out=path, shortlist=4, windows=2, content_scorer=scorer, features=features, **SMALL)
    return pipe, prof, path, calls


def test_plugins_are_called_and_summary_reported(e2e_profile):
    pipe, prof, path, calls = e2e_profile
    s = prof.end_to_end
    units = s["units"]  # fp + shortlist pairs + windows x formats
    assert calls["scorer"] == units and calls["features"] >= units
    assert 0 < s["cost_ratio"] < 0.5 and s["exhaustive_units"] == 1 + len(measured.exhaustive_units(prof.info, prof.formats))
    assert set(s["spearman"]) == {"ssim", "condition", "psnr", "sqnr", "frechet"}  # no class_agreement: user scorer
    # rho recomputed from first principles: ranks (ties averaged) of the local tier's gn summed over steps
    # and of the stored end-to-end damage, and Pearson's correlation of the ranks
    res = measured.load_results(path)
    units = [u for u in res.of_kind("layer") if u["start"] == 0 and u["stop"] == prof.steps]
    gn = prof.metric("gn").sum(axis=-1)
    local = [gn[prof.info.names.index(u["layers"][0]), prof.formats.index(u["format"])] for u in units]
    assert len(units) == len(s["shortlist"]) and np.ptp(local) > 0
    checked = 0
    for m, v in s["spearman"].items():
        damage = [res.damages(u)[m] for u in units]
        assert v["n"] == len(units)
        if np.ptp(damage) == 0:
            assert v["rho"] is None
            continue
        assert v["rho"] == pytest.approx(np.corrcoef(_ranks(local), _ranks(damage))[0, 1], abs=1e-4)
        checked += 1
    assert checked >= 3


def test_results_stored_per_metric_and_old_readers_unaffected(e2e_profile):
    pipe, prof, path, _ = e2e_profile
    res = measured.load_results(path)
    assert res.fp["ssim"] == pytest.approx(1.0) and res.fp["psnr"] == 100.0
    assert len(res.of_kind("layer")) == len(prof.end_to_end["shortlist"]) and res.of_kind("window")
    for u in res.units:
        assert set(u["values"]) == {"ssim", "condition", "psnr", "sqnr", "frechet"}
        d = res.damages(u)
        assert d["ssim"] >= -1e-9 and d["frechet"] >= -1e-9
    # the local tier loads as before (same digest), and a profile without e2e tables has no results
    assert Profile.load(path).digest == prof.digest
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT COUNT(*) FROM e2e").fetchone()[0]
    assert rows == 5 * (1 + len(res.units))


def test_resume_measures_nothing_twice(e2e_profile, tmp_path):
    pipe, _, path, _ = e2e_profile
    copy = tmp_path / "copy.sqlite"
    shutil.copy(path, copy)
    prof = Profile.load(copy)
    name = prof.info.names[4]
    first = measured.measure(pipe, prof, [measured.Unit((name,), "int8")])  # default scorers: a second run in the file
    again = measured.measure(pipe, prof, [measured.Unit((name,), "int8"), measured.Unit((name,), "nvfp4")])
    assert first["run"] == again["run"] and first["measured"] == 2  # fp reference + the unit
    assert again["skipped"] == 2 and again["measured"] == 1
    res = measured.load_results(copy)  # the latest run, with the default classifier's metrics
    assert res.run == first["run"] and "class_agreement" in res.metrics and len(res.units) == 2
    assert measured.load_results(copy, measured.load_results(path).run).run != res.run  # the first run stays readable


def test_window_unit_quantizes_only_inside_its_window(dit_pipe, tmp_path):
    from mpsearch.runtime.generation import generate

    name = "transformer_blocks.0.ff.net.0.proj"
    ref = generate(dit_pipe, [1, 2], 0, 4)
    with measured.quantized(dit_pipe, [name], "nvfp4", window=(9, 10)):  # a window past the last step: no effect
        same = generate(dit_pipe, [1, 2], 0, 4)
    with measured.quantized(dit_pipe, [name], "nvfp4", window=(0, 1)):
        early = generate(dit_pipe, [1, 2], 0, 4)
    with measured.quantized(dit_pipe, [name], "nvfp4"):
        full = generate(dit_pipe, [1, 2], 0, 4)
    assert np.array_equal(ref, same)
    assert not np.array_equal(ref, early) and not np.array_equal(early, full)
    assert np.array_equal(ref, generate(dit_pipe, [1, 2], 0, 4))  # hooks removed


def test_decoupled_solve_respects_budget_and_weights_move_it(e2e_profile):
    _, prof, path, _ = e2e_profile
    for weights in ("content=1,quality=1", "content=1,quality=0", {"quality": 1}, "ssim=2,frechet=1"):
        plan = mpsearch.solve(path, "55%", objective_weights=weights)
        assert plan.predicted_bytes <= plan.budget["bytes"]
        assert plan.provenance["metric"] == "e2e" and plan.provenance["end_to_end"]["measured_pairs"] >= 1
    content, quality = e2e.e2e_costs(prof, "content=1")[0], e2e.e2e_costs(prof, "quality=1")[0]
    assert not np.allclose(np.nan_to_num(content, posinf=9), np.nan_to_num(quality, posinf=9))
    cost, report = e2e.e2e_costs(prof, "content=1,quality=1")
    finite = cost[np.isfinite(cost)]
    assert finite.min() >= 0 and report["estimated_pairs"] > 0 and len(report["step_weights"]) == prof.steps


def test_minimax_rules_out_damaging_pairs(e2e_profile):
    _, prof, path, _ = e2e_profile
    base, _ = e2e.e2e_costs(prof, None)
    cost, rep = e2e.e2e_costs(prof, None, max_damage=0.3)
    top = base[np.isfinite(base)].max()
    assert rep["ruled_out"] == int((np.isfinite(base[:, 1:]) & (base[:, 1:] > 0.3 * top)).sum()) > 0
    assert np.isfinite(cost[:, 0]).all()
    plan = mpsearch.solve(path, "80%", max_damage=0.3, role_pins={})
    index = {n: i for i, n in enumerate(prof.info.names)}
    for name, f in plan.layers.items():
        assert base[index[name], prof.formats.index(f)] <= 0.3 * top + 1e-12
    assert plan.predicted_bytes <= plan.budget["bytes"]


def test_activation_overrides_from_windows(e2e_profile, dit_pipe):
    """One override: in the window whose measured SSIM damage (summed over its units) is the larger of the two,
    every layer of the plan whose format quantizes activations (int8, nvfp4; not weight-only int4) keeps them
    in fp; installed, it changes the images against the same plan without it, and only through those steps."""
    from mpsearch.runtime.generation import generate

    _, prof, path, _ = e2e_profile
    plan = mpsearch.solve(path, "60%", objective_weights="ssim=1", fp_act_windows=1)
    per_window = {}
    for u in measured.load_results(path).of_kind("window"):
        d = max(measured.load_results(path).damages(u)["ssim"], 0.0)
        per_window[(u["start"], u["stop"])] = per_window.get((u["start"], u["stop"]), 0.0) + d
    assert sorted(per_window) == [(0, 2), (2, 4)] and len(set(per_window.values())) == 2
    worst = max(per_window, key=per_window.get)
    act_layers = {n for n, f in plan.layers.items() if f != "fp" and get_format(f).quantizes_activations}
    assert act_layers, "the 60% plan should run some layer with quantized activations"
    assert plan.overrides == [{"steps": list(worst), "activations": {n: "fp" for n in act_layers}}]

    def images(p):
        with mpsearch.apply_plan(dit_pipe, p, ignore_weights=True):
            return generate(dit_pipe, [1, 2], 0, 4)

    bare = mpsearch.Plan.from_assignment(prof.info, dict(plan.layers), calibration=plan.calibration)
    assert not np.array_equal(images(plan), images(bare))  # the override installed and took effect
    all_fp = mpsearch.Plan.from_assignment(prof.info, dict(plan.layers), calibration=plan.calibration, overrides=[
        {"steps": [0, 4], "activations": {n: "fp" for n in act_layers}}])
    assert not np.array_equal(images(plan), images(all_fp))  # ... only inside its window


def test_calibration_is_monotone_and_exact_on_a_power_law():
    x = np.array([1e-4, 1e-3, 1e-2, 1e-1])
    fit = e2e.calibrate(x, 3 * x ** 0.5)
    assert np.allclose(fit(x), 3 * x ** 0.5) and fit(np.array([0.0]))[0] == 0
    assert np.allclose(e2e.calibrate(x[:2], 2 * x[:2])(np.array([5.0])), 10.0)  # too few points: median ratio


def test_bad_input_is_refused(e2e_profile, tmp_path):
    _, prof, path, _ = e2e_profile
    for bad in ("content=x", "colour=1", "content=0,quality=0", "content"):
        with pytest.raises(UsageError):
            e2e.parse_weights(bad)
    with pytest.raises(UsageError):
        e2e.e2e_costs(prof, None, max_damage=2)
    local_only = tmp_path / "local.sqlite"
    with sqlite3.connect(path) as src, sqlite3.connect(local_only) as dst:
        src.backup(dst)
        dst.executescript("DELETE FROM e2e; DELETE FROM e2e_units; DELETE FROM e2e_runs;")  # a local-only profile
    assert measured.load_results(local_only) is None
    with pytest.raises(ProfileError, match="--end-to-end"):
        mpsearch.solve(local_only, "60%", objective_weights="content=1")


def test_cli_profile_end_to_end_and_solve_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.sqlite"
    rc = main(["profile", "--model", "default", "--out", str(out), "--labels", "0,1", "--seeds", "0", "--steps", "2",
               "--formats", "int8,int4", "--end-to-end", "--shortlist", "2", "--windows", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and 0 < data["cost_ratio"] < 1 and set(data["spearman"]) >= {"ssim", "psnr", "frechet"}
    rc = main(["solve", "--profile", str(out), "--budget", "70%", "--objective-weights", "content=1,quality=1",
               "--fp-act-windows", "1", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert rc == 0 and plan["bytes"] <= plan["budget"]["bytes"]
    assert main(["solve", "--profile", str(out), "--budget", "70%", "--objective-weights", "looks=1"]) == 2


def test_run_end_to_end_names_results_missing_after_measuring(monkeypatch):
    """Results that cannot be read back right after measuring are a one-line ProfileError (it was an
    AttributeError on None inside spearman)."""
    from types import SimpleNamespace

    import mpsearch.allocation.decoupled.run as run

    prof = SimpleNamespace(path="p.sqlite", info=SimpleNamespace(names=["a"]), formats=("fp", "int8"), steps=4)
    monkeypatch.setattr(run, "shortlist", lambda *a, **k: [("a", "int8")])
    monkeypatch.setattr(run, "exhaustive_units", lambda *a, **k: ["unit"])
    monkeypatch.setattr(run, "layer_costs", lambda *a, **k: np.zeros((1, 2)))
    monkeypatch.setattr(run, "layer_units", lambda *a, **k: ["unit"])
    monkeypatch.setattr(run, "measure", lambda *a, **k: {"run": "r1", "measured": 1, "seconds": 0.0})
    monkeypatch.setattr(run, "load_results", lambda *a, **k: None)
    with pytest.raises(ProfileError, match=r"no end-to-end results for run 'r1' after measuring it"):
        run.run_end_to_end(None, prof, windows=0)
