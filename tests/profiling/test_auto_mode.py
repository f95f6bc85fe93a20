"""The automatic profile mode (the default): exact on small denoisers without a probe; on large ones the least
checked approximation within the time and memory targets, chosen from a one-step probe (simulated here with
canned measurements), said in one line, recorded in the profile and resumed; --exact and flags override; a
one-line refusal when nothing fits in free memory."""

import json

import numpy as np
import pytest

from mpsearch.apps.cli import main
from mpsearch.apps.profile import ProfileConfig, profile
from mpsearch.errors import ResourceError, UsageError
from mpsearch.profiling import auto
from mpsearch.profiling.store import stored_config

BASE = {"labels": (0, 1), "seeds": (0,), "steps": 3, "formats": ("int8", "nvfp4")}
GB = 10**9


def _no_probe(*_a, **_k):
    raise AssertionError("the auto mode probed a small model")


def _simulate(monkeypatch, *, step=1.0, replay_row=1.0, peak=4 * GB, peak_ck=None, free=100 * GB, gen=10.0,
              gen_peak=4 * GB, rows=2, held_peak=None):
    """A 'large' model: every denoiser probed, with canned measurements (seconds, bytes); returns the probes run."""
    probes = []
    monkeypatch.setattr(auto, "EXACT_PARAMS", 0)
    monkeypatch.setattr(auto, "free_memory", lambda device: free)
    monkeypatch.setattr(auto, "measure_generation", lambda pipe, config: {
        "seconds": gen, "one_step_seconds": gen / config.steps, "step_seconds": gen / config.steps, "rows": rows,
        "peak_bytes": gen_peak, "device": __import__("torch").device("cpu")})

    def probe(pipe, config, checkpoint):
        if checkpoint and peak_ck is None:
            raise UsageError("no activation checkpointing")
        probes.append((config, checkpoint))
        n_rows = min(config.replay_rows or rows, rows)
        r = replay_row * n_rows * (1.5 if checkpoint else 1.0)
        return {"measured_seconds": 0.5 + step + r, "setup_seconds": 0.5, "step_seconds": step, "replay_seconds": r,
                "peak_bytes": peak_ck if checkpoint else peak}

    def probe_unit(unit, config, checkpoint, watch):  # the probe of the profile's own first unit
        p = probe(None, config, checkpoint)
        return {**p, "overhead_seconds": 0.0, "sens": None}

    def held(unit, config, watch):  # the replay's held activations: its peak predicted as the replay's own
        return {"bytes": peak - gen_peak, "forward_seconds": replay_row / 3, "seconds": replay_row / 3,
                "predicted_peak_bytes": peak if held_peak is None else held_peak, "setup_seconds": 0.5,
                "step_seconds": step, "overhead_seconds": 0.0}

    monkeypatch.setattr(auto, "_probe", probe)
    monkeypatch.setattr(auto, "_measure_unit", probe_unit)
    monkeypatch.setattr(auto, "_measure_held", held)
    return probes


def test_small_models_stay_exact_without_a_probe(dit_pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "measure_generation", _no_probe)
    monkeypatch.setattr(auto, "_probe", _no_probe)
    lines = []
    a = profile(dit_pipe, out=tmp_path / "a.sqlite", progress=False, say=lines.append, **BASE)
    e = profile(dit_pipe, out=tmp_path / "e.sqlite", progress=False, mode="exact", **BASE)
    assert a.config == e.config and "sample" not in a.config and "mode" not in a.config
    np.testing.assert_array_equal(a.stats, e.stats)
    np.testing.assert_array_equal(a.sensitivity, e.sensitivity)
    assert lines == []  # exact as ever: nothing more to say (errors stay one line, the demo's output the same)
    choice = auto.choose_profile(dit_pipe, ProfileConfig(**BASE))
    assert not choice.probed and choice.config == ProfileConfig(**BASE) and "auto -> exact" in choice.line
    given = ProfileConfig(**BASE, sample=8)  # flags on a small model: kept as given, silently
    assert auto.choose_profile(dit_pipe, given).config == given


def test_the_embedded_default_profiles_exactly_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(auto, "measure_generation", _no_probe)
    argv = ["profile", "--steps", "2", "--seeds", "0", "--labels", "0,1", "--json"]
    assert main([*argv, "--out", str(tmp_path / "a.sqlite")]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main([*argv, "--out", str(tmp_path / "e.sqlite"), "--exact"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert a["digest"] == e["digest"]  # the same numbers and the same stored configuration
    assert stored_config(tmp_path / "a.sqlite") == stored_config(tmp_path / "e.sqlite")


def test_a_large_model_gets_the_least_approximation_within_the_targets(dit_pipe, tmp_path, monkeypatch):
    # 3 steps: probed step 1 s each, a replayed row 1 s, 2 rows per call; a generation 10 s, so 30 s allowed:
    # the whole command replaying every step and row: the one-step generation measured (10 / 3 s), setup 0.5 s,
    # the first unit's 3 probed steps, the probe's replay of one row (1 s), then 3 steps x 2 rows = 13.8 s: fits
    probes = _simulate(monkeypatch, gen=10.0)
    lines = []
    p = profile(dit_pipe, out=tmp_path / "p.sqlite", progress=False, say=lines.append, **BASE)
    assert (p.config["sample"], p.config["replay_steps"], p.config["replay_batch"]) == (64, 3, 1)
    assert "replay_rows" not in p.config and len(probes) == 1 and probes[0][0].replay_rows == 1
    assert p.config["mode"] == "auto" and "exact is not probed" in p.config["reason"]
    assert len(lines) == 1 and lines[0].startswith("profile: auto -> sample 64, replay 3 steps x every row")
    assert "x a generation (14 s, the probe's 4.3 s and its first unit included)" in lines[0]
    assert "peak 4.00 GB" in lines[0]


def test_a_tighter_time_target_approximates_more(dit_pipe, tmp_path, monkeypatch):
    # 16 steps, a generation of 16 s (48 s allowed): 5 steps x every row (about 28 s, the probe included) fits;
    # within 1.7x (27.2 s) only 4 steps x every row (26 s) does; within 1.1x (17.6 s) none: the fastest checked
    # (docs/benchmarks.md, auto-mode-decisions: fewer steps and one replayed row failed, and are not chosen)
    _simulate(monkeypatch, gen=16.0)
    cfg = dict(BASE, steps=16)
    p = profile(dit_pipe, out=tmp_path / "a.sqlite", progress=False, say=lambda _: None, **cfg)
    assert (p.config["replay_steps"], p.config.get("replay_rows")) == (5, None)
    lines = []
    q = profile(dit_pipe, out=tmp_path / "b.sqlite", progress=False, say=lines.append, max_time=1.7, **cfg)
    assert (q.config["replay_steps"], q.config.get("replay_rows")) == (4, None)
    assert "replay 4 steps x every row" in lines[0] and "the least checked approximation within" in lines[0]
    r = profile(dit_pipe, out=tmp_path / "c.sqlite", progress=False, say=lines.append, max_time=1.1, **cfg)
    assert (r.config["replay_steps"], r.config.get("replay_rows")) == (4, None)
    assert "nothing checked is within 1.1x a generation: the fastest" in lines[1]


def test_memory_over_the_cap_checkpoints_the_replay(dit_pipe, tmp_path, monkeypatch):
    # without checkpointing 5.5 GB > 1.25 x 4 GB; every block checkpointed 4.4 GB; half of them 4.95 GB fits
    probes = _simulate(monkeypatch, peak=int(5.5 * GB), peak_ck=int(4.4 * GB))
    lines = []
    p = profile(dit_pipe, out=tmp_path / "p.sqlite", progress=False, say=lines.append, **BASE)
    # the replay without checkpointing is not run: its peak, predicted from the activations it would hold, is
    # over the cap, so only the checkpointed one is probed
    assert [c for _, c in probes] == [True]
    assert p.config["replay_checkpoint"] == 0.5 and "checkpoint 0.5 of blocks" in lines[0]
    # --max-memory as a factor or a size moves the cap
    q = profile(dit_pipe, out=tmp_path / "q.sqlite", progress=False, say=lines.append, max_memory="1.4x", **BASE)
    assert "replay_checkpoint" not in q.config and "1.4x its peak" in q.config["reason"]
    r = profile(dit_pipe, out=tmp_path / "r.sqlite", progress=False, say=lines.append, max_memory="4.5GB", **BASE)
    assert r.config["replay_checkpoint"] is True


def test_a_replay_predicted_to_fit_is_probed_and_its_measured_peak_decides(dit_pipe, tmp_path, monkeypatch):
    # predicted to fit (4.8 GB <= 5 GB), measured over the cap (5.5 GB): the checkpointed replay is probed too
    probes = _simulate(monkeypatch, peak=int(5.5 * GB), peak_ck=int(4.4 * GB), held_peak=int(4.8 * GB))
    p = profile(dit_pipe, out=tmp_path / "p.sqlite", progress=False, say=lambda _: None, **BASE)
    assert [c for _, c in probes] == [False, True] and p.config["replay_checkpoint"] == 0.5
    # within the cap as predicted and measured: no checkpointed probe, no checkpointing
    probes = _simulate(monkeypatch, peak=int(4.5 * GB), peak_ck=int(4.4 * GB))
    q = profile(dit_pipe, out=tmp_path / "q.sqlite", progress=False, say=lambda _: None, **BASE)
    assert [c for _, c in probes] == [False] and "replay_checkpoint" not in q.config


def test_a_replay_predicted_over_free_memory_is_refused_before_it_runs(dit_pipe, tmp_path, monkeypatch):
    # no activation checkpointing to fall back on, and the replay's predicted peak (6 GB) is over the 5 GB free:
    # a one-line refusal before any replay runs (a replay that does not fit would not be survived)
    probes = _simulate(monkeypatch, peak=6 * GB, free=5 * GB)
    with pytest.raises(ResourceError, match="exceeds the 5.00 GB free"):
        profile(dit_pipe, out=tmp_path / "p.sqlite", progress=False, **BASE)
    assert probes == [] and not (tmp_path / "p.sqlite").exists()


def test_no_setting_fits_free_memory_is_a_one_line_refusal(dit_pipe, tmp_path, capsys, monkeypatch):
    # the given share (0.25) peaks at 5.75 GB, over the 5.5 GB free; half the blocks checkpointed would fit
    _simulate(monkeypatch, peak=6 * GB, peak_ck=5 * GB, free=int(5.5 * GB))
    out = tmp_path / "p.sqlite"
    rc = main(["profile", "--out", str(out), "--steps", "2", "--seeds", "0", "--labels", "0", "--replay-checkpoint",
               "0.25"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and not out.exists() and not any(tmp_path.iterdir())
    assert "exceeds the 5.50 GB free" in err[-1] and "these fit: --replay-steps 2 --replay-checkpoint 0.5" in err[-1]
    assert not any("profile: auto" in line for line in err)
    _simulate(monkeypatch, peak=6 * GB, peak_ck=5 * GB, free=4 * GB)
    with pytest.raises(ResourceError, match="no checked setting fits"):
        profile(dit_pipe, out=out, progress=False, **BASE)
    assert not out.exists()


def test_exact_and_flags_override_the_choice(tmp_path, capsys, monkeypatch):
    probes = _simulate(monkeypatch)
    argv = ["profile", "--steps", "3", "--seeds", "0", "--labels", "0,1", "--json"]
    assert main([*argv, "--out", str(tmp_path / "e.sqlite"), "--exact"]) == 0 and not probes
    e = stored_config(tmp_path / "e.sqlite")
    assert "sample" not in e and "mode" not in e
    assert main([*argv, "--out", str(tmp_path / "f.sqlite"), "--replay-steps", "2", "--sample", "32"]) == 0
    f = stored_config(tmp_path / "f.sqlite")
    assert (f["replay_steps"], f["sample"], f["replay_batch"], f["mode"]) == (2, 32, 1, "auto")
    assert probes[0][0].sample == 32
    code = main([*argv, "--out", str(tmp_path / "g.sqlite"), "--exact", "--max-memory", "2GB"])
    assert code == 2 and "leave them out with --exact" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "h.sqlite"), "--max-memory", "lots"]) == 2
    assert "--max-memory 20GB" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "i.sqlite"), "--max-time", "0x"]) == 2
    assert "positive number of generations" in capsys.readouterr().err
    n = len(probes)
    assert main([*argv, "--out", str(tmp_path / "j.sqlite"), "--max-time", "1.5x", "--max-memory", "2x"]) == 0
    assert len(probes) == n + 1 and "1.5x a generation and 2x its peak" in stored_config(tmp_path / "j.sqlite")["reason"]
    assert not any(tmp_path.glob("[ghi].sqlite"))


def test_a_profile_of_the_auto_mode_resumes_with_its_choice(dit_pipe, tmp_path, monkeypatch):
    probes = _simulate(monkeypatch, gen=10.0)
    out = tmp_path / "p.sqlite"
    profile(dit_pipe, out=out, progress=False, say=lambda _: None, **dict(BASE, seeds=(0,)))
    _simulate(monkeypatch, gen=1.0)  # a slower machine now: a new choice would differ
    lines = []
    p = profile(dit_pipe, out=out, progress=False, say=lines.append, **BASE)
    assert len(probes) == 1 and p.config["replay_steps"] == 3 and "resuming the choice" in lines[0]


def test_the_real_probe_runs_and_predicts(dit_pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "EXACT_PARAMS", 0)  # probe the tiny model as if it were large
    choice = auto.choose_profile(dit_pipe, ProfileConfig(**BASE, guidance_scale=2.0))
    assert choice.config.sample == 64 and choice.config.replay_batch == 1 and choice.seconds > 0
    assert choice.peak_bytes > 0 and choice.generation_seconds > 0 and "predicted" in choice.line


@pytest.mark.parametrize("spec, want", [("20GB", (20 * GB, None)), ("1GiB", (2**30, None)), ("1.5x", (None, 1.5)),
                                        (None, (None, None))])
def test_max_memory_parses(spec, want):
    assert auto.parse_max_memory(spec) == want


@pytest.mark.parametrize("bad", ["0x", "lots", "-1GB", "0GB"])
def test_a_bad_max_memory_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="max memory"):
        auto.parse_max_memory(bad)


def test_mode_must_be_auto_or_exact():
    with pytest.raises(UsageError, match="mode"):
        ProfileConfig(mode="fast")


def test_the_bar_counts_predicted_seconds_with_a_forecast(dit_pipe, tmp_path, monkeypatch):
    from mpsearch.profiling import profiler

    bar, step, replay = profiler._progress_bar(2, 3, False, {"step": 1.5, "replay": 4.0})
    assert (bar.total, step, replay) == (2 * (3 * 1.5 + 4.0), 1.5, 4.0)
    bar, step, replay = profiler._progress_bar(2, 3, False, None)
    assert (bar.total, step, replay) == (6, 1, 0)  # no forecast: denoising steps, as before
    _simulate(monkeypatch, gen=10.0)
    seen = []
    real = profiler._progress_bar
    monkeypatch.setattr(profiler, "_progress_bar", lambda *a: seen.append(a[3]) or real(*a))
    profile(dit_pipe, out=tmp_path / "p.sqlite", progress=False, say=lambda _: None, **BASE)
    assert seen == [{"step": 1.0, "replay": 3 * 2 * 1.0}]  # 3 replayed steps x 2 rows x 1 s


def test_the_cli_says_the_choice_and_reports_it(tmp_path, capsys, monkeypatch):
    _simulate(monkeypatch, gen=10.0)
    rc = main(["profile", "--out", str(tmp_path / "p.sqlite"), "--steps", "3", "--seeds", "0", "--labels", "0,1",
               "--json"])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    said = [line for line in captured.err.splitlines() if line.startswith("profile: auto")]
    assert rc == 0 and len(said) == 1 and "predicted" in said[0]
    assert data["auto"]["sample"] == 64 and data["auto"]["replay_steps"] == 3 and "exact" in data["auto"]["reason"]


def test_separate_shards_of_a_large_model_need_explicit_settings(dit_pipe, tmp_path, monkeypatch):
    probes = _simulate(monkeypatch)
    with pytest.raises(UsageError, match="shard 0/2.*--exact"):
        profile(dit_pipe, out=tmp_path / "p.sqlite", progress=False, shard=(0, 2), **BASE)
    assert not probes and not (tmp_path / "p.sqlite").exists()
    p = profile(dit_pipe, out=tmp_path / "p.sqlite", progress=False, shard=(0, 2), mode="exact", sample=64, **BASE)
    assert p.config["sample"] == 64 and "mode" not in p.config


def test_a_foreign_out_file_is_still_the_writers_one_line_error(dit_pipe, tmp_path, monkeypatch):
    from mpsearch.errors import ProfileError

    _simulate(monkeypatch)
    out = tmp_path / "p.sqlite"
    out.write_bytes(b"not a database" * 100)
    with pytest.raises(ProfileError, match="p.sqlite"):
        profile(dit_pipe, out=out, progress=False, **BASE)
    assert out.read_bytes() == b"not a database" * 100


def _count_work(monkeypatch):
    """Counts the generations (plain and probed) and the replays the auto mode runs."""
    from mpsearch.profiling import profiler

    seen = {"generate": 0, "replay": 0}
    real_generate, real_replay = profiler.generate, profiler.output_sensitivity

    def generate(*a, **k):
        seen["generate"] += 1
        return real_generate(*a, **k)

    def replay(*a, **k):
        seen["replay"] += 1
        return real_replay(*a, **k)

    monkeypatch.setattr(profiler, "generate", generate)
    monkeypatch.setattr(auto, "generate", generate)
    monkeypatch.setattr(profiler, "output_sensitivity", replay)
    return seen


def test_the_probe_is_the_profiles_first_unit_and_its_work_is_kept(dit_pipe, tmp_path, monkeypatch):
    # the real probe on the tiny model taken for a large one, with the caller's replay of 1 step x 1 row (the
    # probe's own replay, no longer one the auto mode picks by itself): the probe's replay is the first unit's
    monkeypatch.setattr(auto, "EXACT_PARAMS", 0)
    seen = _count_work(monkeypatch)
    lines = []
    cfg = dict(BASE, seeds=(0, 1), guidance_scale=2.0)
    p = profile(dit_pipe, out=tmp_path / "a.sqlite", progress=False, say=lines.append, max_time=1e-6,
                replay_steps=1, replay_rows=1, **cfg)
    assert (p.config["replay_steps"], p.config["replay_rows"], p.config["sample"]) == (1, 1, 64)
    # one plain one-step generation, then the profile's two units: no separate probe's generation; one replay
    # per unit: the probe's replay was the first unit's
    assert seen == {"generate": 1 + 2, "replay": 2}
    assert len(lines) == 1 and "its first unit included" in lines[0]
    # the same numbers as a profile run with those settings from the start
    given = {k: p.config[k] for k in ("sample", "replay_steps", "replay_batch", "replay_rows")}
    # the same candidates: the automatic mode measured no variants at (what it took for) a large model's size
    e = profile(dit_pipe, out=tmp_path / "e.sqlite", progress=False, mode="exact", variants="none", **cfg, **given)
    np.testing.assert_array_equal(p.stats, e.stats)
    np.testing.assert_array_equal(p.sensitivity, e.sensitivity)


def test_a_choice_other_than_the_probes_keeps_its_generation_and_replays_once_more(dit_pipe, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setattr(auto, "EXACT_PARAMS", 0)
    seen = _count_work(monkeypatch)
    cfg = dict(BASE, guidance_scale=2.0)
    p = profile(dit_pipe, out=tmp_path / "a.sqlite", progress=False, say=lambda _: None, max_time=1e6, **cfg)
    assert (p.config["replay_steps"], p.config.get("replay_rows")) == (3, None)  # the least approximation
    assert seen == {"generate": 1 + 1, "replay": 1 + 1}  # the probe's one-step replay, then the chosen one
    given = {k: p.config[k] for k in ("sample", "replay_steps", "replay_batch")}
    # the same candidates: the automatic mode measured no variants at (what it took for) a large model's size
    e = profile(dit_pipe, out=tmp_path / "e.sqlite", progress=False, mode="exact", variants="none", **cfg, **given)
    np.testing.assert_array_equal(p.stats, e.stats)
    np.testing.assert_array_equal(p.sensitivity, e.sensitivity)


def test_the_separate_probes_prediction_counts_the_probe(dit_pipe, monkeypatch):
    # choose_profile (rank 0 under a distributed launch) probes apart from the profile: its cost is predicted too,
    # the one-step generation measured (10 / 3 s) on top of the profile's 9.5 s
    _simulate(monkeypatch, gen=10.0)
    choice = auto.choose_profile(dit_pipe, ProfileConfig(**BASE))
    assert choice.config.replay_steps == 3 and choice.seconds >= 9.5 + 10 / 3
    assert "the probe's" in choice.line and "included" in choice.line


def test_a_refusal_after_the_first_units_generation_leaves_no_file_or_folder(dit_pipe, tmp_path, monkeypatch):
    _simulate(monkeypatch, peak=6 * GB, peak_ck=5 * GB, free=4 * GB)
    out = tmp_path / "new" / "p.sqlite"
    with pytest.raises(ResourceError, match="no checked setting fits"):
        profile(dit_pipe, out=out, progress=False, **BASE)
    assert not (tmp_path / "new").exists()


def test_a_decision_may_change_only_the_replay(dit_pipe, tmp_path):
    # the first unit's generation is kept, so a decision that would have generated it otherwise is refused
    from dataclasses import replace

    from mpsearch.profiling.profiler import profile_local

    cfg = ProfileConfig(**BASE, sample=64)
    with pytest.raises(UsageError, match="change sample"):
        profile_local(dit_pipe, cfg, out=tmp_path / "p.sqlite", progress=False,
                      decide=lambda probe: (replace(probe.config, sample=32), None, None))
    assert not any(tmp_path.iterdir())
    p = profile_local(dit_pipe, cfg, out=tmp_path / "q.sqlite", progress=False,
                      decide=lambda probe: (replace(probe.config, replay_steps=1), None, None))
    assert p.config["replay_steps"] == 1


def test_every_choice_is_a_checked_setting(dit_pipe, monkeypatch):
    # the ladder is auto.checked_settings() (what scripts/bench_scale_approx.py --auto checks against exact),
    # least approximation first: the loosest target takes the first, nothing within the target the fastest
    _simulate(monkeypatch, gen=20.0)
    cfg = ProfileConfig(**dict(BASE, steps=20))
    checked = auto.checked_settings()
    assert checked[0] == {"sample": 64, "replay_batch": 1, "replay_steps": 5, "replay_rows": None}
    chosen = []
    for t in (100, 3, 1.5, 1.4, 1.3, 1.25, 1.2, 1.15, 1.1, 1.08, 0.5):
        c = auto.choose_profile(dit_pipe, cfg, max_time=t).config
        chosen.append({k: getattr(c, k) for k in checked[0]})
    assert all(c in checked for c in chosen), chosen
    assert chosen[0] == checked[0] and chosen[-1] == checked[-1]


def test_a_setting_taken_off_the_checked_list_is_never_chosen(dit_pipe, monkeypatch):
    # a setting that failed the check (docs/benchmarks.md, auto-mode-decisions) leaves the list, and the ladder
    _simulate(monkeypatch, gen=20.0)
    cfg = ProfileConfig(**dict(BASE, steps=20))
    monkeypatch.setattr(auto, "_CHECKED", ((5, None), (5, 1), (1, None), (1, 1)))
    assert auto.choose_profile(dit_pipe, cfg, max_time=1.08).config.replay_rows == 1
    monkeypatch.setattr(auto, "_CHECKED", tuple(s for s in auto._CHECKED if s[1] is None))
    assert all(s["replay_rows"] is None for s in auto.checked_settings())
    c = auto.choose_profile(dit_pipe, cfg, max_time=1.08).config
    assert (c.replay_steps, c.replay_rows) == (1, None)
    # nor offered beside a field the caller set
    c = auto.choose_profile(dit_pipe, ProfileConfig(**dict(BASE, steps=20, replay_steps=2)), max_time=1.08).config
    assert (c.replay_steps, c.replay_rows) == (2, None)
