"""The measured latency table: shape and eligibility, storage in the profile file, merging, the latency-priced
compute budget (against brute force) and the CLI (`profile --latency`, `solve --compute-cost latency`).

No timing is asserted: the numbers depend on the machine and its load; only their structure is checked, and the
solver tests use a synthetic table where a budget must bind.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from conftest import _scheduler, tiny_dit

from mpsearch.apps.pipeline import DigitsPipeline
from mpsearch.apps.profile import profile
from mpsearch.errors import InfeasibleError, ProfileError, UsageError
from mpsearch.formats import get_format
from mpsearch.profiling.latency import LatencyTable, measure_latency
from mpsearch.profiling.store import Profile, merge_profiles, write_latency

MIN_TIME = 1e-4  # seconds per timing: the structure is under test, not the numbers


@pytest.fixture(scope="module")
def pipe():
    p = DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit())
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def prof_path(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("lat") / "p.sqlite"
    profile(pipe, out=path, steps=4, seeds=(0,), labels=(1, 2), progress=False, variants="none")
    return path


@pytest.fixture(scope="module")
def table(pipe, prof_path):
    prof = Profile.load(prof_path)
    return measure_latency(pipe, prof.info, formats=prof.formats, steps=4, conditions=[1, 2], min_time=MIN_TIME,
                           progress=False)


def _same(a: LatencyTable, b: LatencyTable) -> None:
    assert a.names == b.names and a.formats == b.formats and a.device == b.device and a.meta == b.meta
    np.testing.assert_array_equal(a.seconds, b.seconds)  # NaN where NaN
    np.testing.assert_array_equal(a.seconds_weight_only, b.seconds_weight_only)


def _synthetic(info, formats, seed=0) -> LatencyTable:
    """Seconds that fall with the bits (quantized layers faster), with per-layer noise: a budget can bind."""
    rng = np.random.default_rng(seed)
    speed = {"fp": 1.0, "int8": 0.55, "nvfp4": 0.3, "int4": 0.8}
    L, F = len(info.layers), len(formats)
    base = rng.uniform(1e-4, 1e-3, size=L)
    seconds, wo = np.full((L, F), np.nan), np.full((L, F), np.nan)
    for li, layer in enumerate(info.layers):
        for fi, f in enumerate(formats):
            if f in layer.eligible:
                seconds[li, fi] = base[li] * speed[f.partition(":")[0]] * rng.uniform(0.9, 1.1)
                if get_format(f).quantizes_activations:
                    wo[li, fi] = base[li] * 0.9 * rng.uniform(0.9, 1.1)
    return LatencyTable(info.names, formats, seconds, wo, "synthetic", {"measured_at": f"2000-01-0{seed + 1}"})


# ------------------------------------------------------------------------------------------- the table

def test_table_shape_eligibility_and_weight_only(table, prof_path):
    info = Profile.load(prof_path).info
    L = len(info.layers)
    assert table.names == info.names and table.formats == ("fp", "int8", "nvfp4", "int4")
    assert table.seconds.shape == table.seconds_weight_only.shape == (L, 4)
    for li, layer in enumerate(info.layers):
        for fi, f in enumerate(table.formats):
            assert np.isfinite(table.seconds[li, fi]) == (f in layer.eligible), (layer.name, f)
            takes_wo = f in layer.eligible and get_format(f).quantizes_activations
            assert np.isfinite(table.seconds_weight_only[li, fi]) == takes_wo, (layer.name, f)
    assert np.isnan(table.seconds_weight_only[:, [0, 3]]).all()  # fp and int4 keep activations fp anyway
    assert (table.seconds[np.isfinite(table.seconds)] >= 0).all()
    assert any("int4" not in l.eligible for l in info.layers)  # the patch embedding: an ineligible cell is NaN
    # every layer runs once per denoiser call, except the timestep embedders' first linear ... counted, not assumed
    assert len(table.meta["calls"]) == L and all(c >= 1 for c in table.meta["calls"])
    assert table.device == "cpu" and table.meta["threads"] == torch.get_num_threads()
    assert table.meta["torch"] == torch.__version__ and table.meta["measured_at"]
    _same(LatencyTable.from_dict(json.loads(json.dumps(table.to_dict()))), table)
    totals = table.totals()
    assert totals["fp"]["vs_fp"] == pytest.approx(1.0) and "int8 weight-only" in totals
    assert "int4 weight-only" not in totals and "fp weight-only" not in totals


def test_calls_per_denoiser_call_scale_the_seconds(pipe, prof_path, monkeypatch):
    """seconds = median of one call x calls per denoiser call: a layer run twice per call costs twice."""
    import mpsearch.profiling.latency as lat

    info = Profile.load(prof_path).info
    monkeypatch.setattr(lat, "_median_seconds", lambda fn, min_time, label: 1.0)
    t = measure_latency(pipe, info, formats=("fp", "int4"), steps=2, conditions=[1], min_time=MIN_TIME,
                        progress=False)
    np.testing.assert_array_equal(t.seconds[:, 0], np.array(t.meta["calls"], dtype=float))


def test_table_validation():
    with pytest.raises(UsageError, match="fp column"):
        LatencyTable(("a",), ("int8",), [[1.0]], [[1.0]], "cpu")
    with pytest.raises(UsageError, match="shape"):
        LatencyTable(("a",), ("fp",), [[1.0, 2.0]], [[np.nan]], "cpu")
    with pytest.raises(UsageError, match="negative"):
        LatencyTable(("a",), ("fp",), [[-1.0]], [[np.nan]], "cpu")
    with pytest.raises(UsageError, match="lacks the fp time"):
        LatencyTable(("a",), ("fp",), [[np.nan]], [[np.nan]], "cpu")


# ------------------------------------------------------------------------------------------- storage

def test_stored_and_reloaded_identically_and_replaced_whole(table, prof_path, tmp_path):
    path = tmp_path / "p.sqlite"
    shutil.copy(prof_path, path)
    before = Profile.load(path)
    assert before.latency() is None  # a profile never given a table (as every profile written before) has none
    write_latency(path, table)
    after = Profile.load(path)
    _same(after.latency(), table)
    assert after.digest == before.digest  # the table is the machine's, not the model's: the digest stays
    np.testing.assert_array_equal(after.stats, before.stats)
    other = _synthetic(after.info, table.formats)
    write_latency(path, other)
    _same(Profile.load(path).latency(), other)  # replaced, not mixed


def test_a_failed_write_leaves_the_old_table(table, prof_path, tmp_path, monkeypatch):
    import mpsearch.profiling.store.latency as ps

    path = tmp_path / "p.sqlite"
    shutil.copy(prof_path, path)
    write_latency(path, table)
    real = ps._latency_rows
    monkeypatch.setattr(ps, "_latency_rows", lambda *a: real(*a) + real(*a)[:1])  # a duplicate row fails mid-write
    with pytest.raises(ProfileError, match="cannot store"):
        write_latency(path, _synthetic(table_info(path), table.formats))
    _same(Profile.load(path).latency(), table)
    bad = LatencyTable(table.names[:-1], table.formats, table.seconds[:-1], table.seconds_weight_only[:-1],
                       "cpu", {})
    monkeypatch.setattr(ps, "_latency_rows", real)
    with pytest.raises(ProfileError, match="another model"):
        write_latency(path, bad)
    _same(Profile.load(path).latency(), table)


def table_info(path):
    return Profile.load(path).info


def test_corrupt_latency_table_is_a_profile_error(table, prof_path, tmp_path):
    path = tmp_path / "p.sqlite"
    shutil.copy(prof_path, path)
    write_latency(path, table)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'latency'")
    with pytest.raises(ProfileError, match="latency times without their meta"):
        Profile.load(path).latency()
    write_latency(path, table)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE latency SET seconds = 'x' WHERE layer = 0")
    with pytest.raises(ProfileError, match="corrupt latency table"):
        Profile.load(path).latency()


def test_merge_carries_the_latest_table_whole(pipe, tmp_path):
    shards = [tmp_path / f"s{i}.sqlite" for i in range(2)]
    for i, s in enumerate(shards):
        profile(pipe, out=s, steps=2, seeds=(0, 1), labels=(1,), shard=(i, 2), progress=False, variants="none")
    plain = merge_profiles(shards, tmp_path / "plain.sqlite")
    assert plain.latency() is None
    info = plain.info
    formats = ("fp", "int8", "nvfp4", "int4")
    older, newer = _synthetic(info, formats, 0), _synthetic(info, formats, 1)
    write_latency(shards[0], older)  # the first input's is not the one kept: the latest is
    write_latency(shards[1], newer)
    merged = merge_profiles(shards, tmp_path / "m.sqlite")
    _same(merged.latency(), newer)
    assert merged.digest == plain.digest


# ------------------------------------------------------------------------------------------- solving

def _compute_setup(pipe, prof_path, pins=None):
    from mpsearch.allocation.compute import record_layer_calls
    from mpsearch.allocation.objective import build_problem

    prof = Profile.load(prof_path)
    calls = record_layer_calls(pipe, prof.info, steps=prof.steps, windows=2, formats=prof.formats[1:])
    base = build_problem(prof, None, role_pins={}, pins=pins)
    return prof, calls, base


def _table_cost(cm, table, choice) -> float:
    """The plan's seconds from the table itself: quant x (1 - fp-activation share) + weight-only x share."""
    steps = cm.windows[-1][1]
    total = 0.0
    for li, c in enumerate(choice):
        fmt, a16 = cm.variants[int(c)]
        mix = sum((cm.windows[w][1] - cm.windows[w][0]) / steps for w in a16)
        quant = table.column(fmt)[li]
        wo = table.column(fmt, weight_only=True)[li] if get_format(fmt).quantizes_activations else quant
        total += quant * (1 - mix) + wo * mix
    return total


def test_latency_priced_compute_respects_the_table_and_matches_brute_force(pipe, prof_path):
    from mpsearch.allocation.compute import compute_problem
    from mpsearch.allocation.solvers import get_solver

    # five free layers (the rest pinned to fp): 10 columns each (fp, int8 and nvfp4 with 3 window variants, int4)
    free = r"^(?!transformer_blocks\.0\.attn1\.|transformer_blocks\.0\.ff\.net\.0).*=fp"
    prof, calls, base = _compute_setup(pipe, prof_path, pins=[free])
    assert sum(1 for i in range(base.n_layers) if i not in base.pins) == 5
    table = _synthetic(prof.info, prof.formats)
    fp_total = float(table.column("fp").sum())
    for spec in ("90%", f"{fp_total * 0.93 * 1e3:.6f}ms"):
        cm = compute_problem(prof, base, calls, spec, cost=table)
        assert cm.kind == "latency" and cm.unit == "s" and cm.full == pytest.approx(fp_total)
        assert "int8[a16:0-2]" in cm.problem.formats
        ilp = get_solver("cbc").solve(cm.problem)
        brute = get_solver("bruteforce").solve(cm.problem)
        assert ilp.objective == pytest.approx(brute.objective, rel=1e-6, abs=1e-12)
        for sol in (ilp, brute):
            assert _table_cost(cm, table, sol.choice) <= cm.limit * (1 + 1e-9)
            assert cm.value(sol.choice) == pytest.approx(_table_cost(cm, table, sol.choice))
        unconstrained = get_solver("bruteforce").solve(compute_problem(prof, base, calls, "1000%", cost=table).problem)
        assert _table_cost(cm, table, unconstrained.choice) > cm.limit  # the budget binds
        assignment, overrides = cm.decode(ilp.choice)
        np.testing.assert_array_equal(cm.encode(assignment, overrides), ilp.choice)
        preds = cm.predictions(ilp.choice)
        assert preds["compute_cost"] == "latency" and preds["compute_seconds"] <= preds["compute_limit_seconds"]


def test_latency_priced_compute_errors(pipe, prof_path, table):
    from mpsearch.allocation.compute import compute_problem, parse_compute

    prof, calls, base = _compute_setup(pipe, prof_path)
    assert parse_compute("12ms", 1.0, "s") == pytest.approx(0.012)
    assert parse_compute("800us", 1.0, "s") == pytest.approx(8e-4)
    assert parse_compute("0.5 s", 1.0, "s") == pytest.approx(0.5)
    assert parse_compute("50%", 2.0, "s") == pytest.approx(1.0)
    with pytest.raises(UsageError, match="does not parse"):
        parse_compute("12ms", 1.0, "bops")
    with pytest.raises(UsageError, match="does not parse"):
        parse_compute("12", 1.0, "s")
    with pytest.raises(InfeasibleError, match="least compute any allowed plan needs"):
        compute_problem(prof, base, calls, "1us", cost=table)
    short = LatencyTable(table.names, ("fp",), table.seconds[:, :1], table.seconds_weight_only[:, :1], "cpu")
    with pytest.raises(UsageError, match="no times for int8"):
        compute_problem(prof, base, calls, "50%", cost=short)
    # the measured table itself (any numbers): all-fp always fits 100% of full precision
    cm = compute_problem(prof, base, calls, "100%", cost=table)
    assert cm.value(np.zeros(base.n_layers, dtype=int)) == pytest.approx(cm.full)


# ------------------------------------------------------------------------------------------- CLI

def _run(capsys, *argv):
    from mpsearch.apps.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_profile_latency_then_solve_with_latency_cost(pipe, tmp_path, monkeypatch, capsys):
    from mpsearch.plan import Plan

    monkeypatch.setattr("mpsearch.apps.pipeline.load_pipeline", lambda *a, **k: pipe)
    monkeypatch.chdir(tmp_path)
    base = ["--out", "p.sqlite", "--steps", "4", "--seeds", "0", "--labels", "1,2"]
    code, out, err = _run(capsys, "profile", *base, "--json")
    assert code == 0, err
    plain = json.loads(out)
    assert plain["latency"] is None

    # the missing table: one line naming the fix
    code, out, err = _run(capsys, "solve", "--profile", "p.sqlite", "--budget", "100%", "--compute", "60%",
                          "--compute-cost", "latency", "--json")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "has no latency table" in err and "mpsearch profile --latency --out p.sqlite" in err
    code, _, err = _run(capsys, "solve", "--profile", "p.sqlite", "--budget", "100%", "--compute-cost", "latency")
    assert code == 2 and "--compute" in err and err.count("\n") == 1

    # --latency on the complete profile, without repeating its options: the file's configuration is used
    code, out, err = _run(capsys, "profile", "--out", "p.sqlite", "--latency", "--latency-min-time", str(MIN_TIME),
                          "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["units_done"] == 1 and data["digest"] == plain["digest"]
    lat = data["latency"]
    assert lat["device"] == "cpu" and lat["layers"] == data["layers"] and lat["threads"] == torch.get_num_threads()
    assert {"fp", "int8", "int8 weight-only", "nvfp4", "nvfp4 weight-only", "int4"} <= set(lat["totals"])
    assert {"int4:gptq", "nvfp4:smooth-gptq", "nvfp4:smooth-gptq weight-only"} <= set(lat["totals"])  # variants too
    # options that differ from the file's are still refused (resume semantics)
    code, _, err = _run(capsys, "profile", "--out", "p.sqlite", "--steps", "5", "--latency")
    assert code == 1 and "another configuration" in err

    # the measured table (whatever its numbers): all-fp fits 100% of fp's latency
    code, out, err = _run(capsys, "solve", "--profile", "p.sqlite", "--budget", "100%", "--compute", "100%",
                          "--compute-cost", "latency", "--role-pins", "none", "--out", "measured.yaml", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["compute"]["cost"] == "latency" and d["compute"]["predicted"] <= d["compute"]["limit"] * (1 + 1e-9)

    # a synthetic table where 60% binds: the plan's predictions and provenance name the cost
    prof = Profile.load("p.sqlite")
    synthetic = _synthetic(prof.info, prof.formats)
    write_latency("p.sqlite", synthetic)
    code, out, err = _run(capsys, "solve", "--profile", "p.sqlite", "--budget", "100%", "--compute", "60%",
                          "--compute-cost", "latency", "--role-pins", "none", "--json")
    assert code == 0, err
    d = json.loads(out)
    plan = Plan.load(d["plan"])
    full = float(synthetic.column("fp").sum())
    assert d["compute"]["full"] == pytest.approx(full) and d["compute"]["limit"] == pytest.approx(0.6 * full)
    assert plan.predictions["compute_cost"] == "latency"
    assert plan.predictions["compute_seconds"] <= 0.6 * full * (1 + 1e-9)
    assert plan.provenance["compute_cost"] == "latency" and plan.provenance["latency"]["device"] == "synthetic"
    assert plan.provenance["compute"] == "60%"
    code, out, err = _run(capsys, "solve", "--profile", "p.sqlite", "--budget", "100%", "--compute", "60%",
                          "--role-pins", "none", "--out", "bops.yaml", "--json")
    assert code == 0, err
    bops = Plan.load("bops.yaml")
    assert bops.predictions["compute_cost"] == "bops" and "compute_bops" in bops.predictions
    code, _, err = _run(capsys, "solve", "--profile", "p.sqlite", "--budget", "100%", "--compute", "1ms",
                        "--compute-cost", "latency")
    assert code == 1 and "least compute any allowed plan needs" in err and err.count("\n") == 1


def test_cli_latency_refuses_a_shard(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "profile", "--shard", "0/2", "--latency")
    assert code == 2 and "merge the shards first" in err and err.count("\n") == 1
