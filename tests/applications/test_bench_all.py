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
    for method in ("uniform int8", "uniform nvfp4", "uniform int4", "MixDQ-style", "AutoQuantize-style",
                   "HAWQ-style", "greedy", "random", "mpsearch local", "mpsearch decoupled",
                   "mpsearch Optuna-refined", "dp (measured costs)", "uniform (measured costs)",
                   "threshold (measured costs)", "dp (profile costs)"):
        assert f"| {method}" in out or f"**{method}**" in out, method
    for budget in ("=nvfp4", "=int4", "int8..int4"):
        assert f"| {budget} (" in out
    assert "Mean rank by MSE" in out
    assert (doc.read_bytes() if doc.exists() else None) == before  # --quick never rewrites the benchmarks
