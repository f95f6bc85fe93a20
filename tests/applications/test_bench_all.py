"""The evidence suite runs: `scripts/bench_all.py --quick` on the default DiT, every method in its table."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_all_quick_runs_every_method():
    doc = ROOT / "docs" / "benchmarks.md"
    before = doc.read_bytes() if doc.exists() else None
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_all.py"), "--quick", "--models", "default"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    for method in ("uniform int8", "uniform nvfp4", "uniform int4", "MixDQ-style", "AutoQuantize (stated budget)",
                   "AutoQuantize (fit)", "HAWQ-style", "greedy", "random", "mpsearch local", "mpsearch decoupled",
                   "mpsearch Optuna-refined"):
        assert f"| {method}" in out or f"**{method}**" in out, method
    for budget in ("=nvfp4", "min+50% to nvfp4", "nvfp4+67% to int8"):
        assert f"| {budget} (" in out
    assert "rank by mean MSE" in out and "local better / tie / worse" in out
    assert "| fp | 3 |" in out and "| int8 | 3 |" in out  # DP vs uniform cache, fp and INT8
    assert "Spearman" in out and "**dev** seeds" in out
    assert (doc.read_bytes() if doc.exists() else None) == before  # --quick never rewrites the benchmarks


def _bench_all():
    import importlib.util

    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("bench_all", ROOT / "scripts" / "bench_all.py")
    bench_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_all)
    return bench_all


def test_split_runs_merge_into_one_result_per_model():
    bench_all = _bench_all()
    a = {"model": "u", "budgets": {"b1": 1, "b2": 2}, "cache": [], "t_cache": 0.0, "t_prof": 5}
    b = {"model": "u", "budgets": {"b3": 3}, "cache": ["row"], "t_cache": 7.0, "t_prof": 6}
    d = {"model": "d", "budgets": {"b1": 9}, "cache": ["r"], "t_cache": 1.0, "t_prof": 1}
    merged = bench_all.merge_parts([a, d, b])
    assert [r["model"] for r in merged] == ["u", "d"]
    assert merged[0]["budgets"] == {"b1": 1, "b2": 2, "b3": 3} and merged[0]["cache"] == ["row"]
    assert merged[0]["t_cache"] == 7.0 and merged[0]["t_prof"] == 5 and a["budgets"] == {"b1": 1, "b2": 2}
    with pytest.raises(SystemExit, match="both measured b1"):
        bench_all.merge_parts([a, {**b, "budgets": {"b1": 4}}])


def test_a_later_part_reuses_the_first_parts_measurements(tmp_path):
    import numpy as np

    bench_all = _bench_all()
    first, later, kept = tmp_path / "first", tmp_path / "later", tmp_path / "measured"
    first.mkdir(), later.mkdir()
    for name in ("m.sqlite", "m-e2e.sqlite"):
        (first / name).write_bytes(name.encode() * 3)
    assert bench_all._load_measured(kept, "m", later) is None  # nothing measured yet
    rng = np.random.default_rng(0)
    meas = {"hawq": rng.random(5), "aq": rng.random((5, 4)),
            "mixdq": {"content": rng.random((5, 4)), "quality": rng.random((5, 4)), "generations": 21}}
    timings = {"t_prof": 1.5, "t_e2e": 2.5, "t_meas": {"hawq": 1.0}, "e2e_report": {"cost_ratio": 0.1}}
    bench_all._save_measured(kept, "m", first, meas, timings)
    got, got_t = bench_all._load_measured(kept, "m", later)
    assert got_t == {**timings, "mixdq_generations": 21}
    assert got["mixdq"]["generations"] == 21
    for key in ("hawq", "aq"):
        np.testing.assert_array_equal(got[key], meas[key])
    for key in ("content", "quality"):
        np.testing.assert_array_equal(got["mixdq"][key], meas["mixdq"][key])
    for name in ("m.sqlite", "m-e2e.sqlite"):
        assert (later / name).read_bytes() == (first / name).read_bytes()
