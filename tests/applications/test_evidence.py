"""The evidence suite's seeds are disjoint and live in one place; the significance helper on known data."""

import re
from pathlib import Path

import numpy as np

from mpsearch.apps.evidence import SPLITS, TEST_SEEDS
from mpsearch.apps.report.significance import compare, holm, summary, verdicts

ROOT = Path(__file__).resolve().parents[2]


def test_seed_sets_disjoint():
    sets = [set(s) for s in SPLITS.values()]
    assert sum(map(len, sets)) == len(set().union(*sets))
    assert len(TEST_SEEDS) * 10 >= 100  # 10 labels per seed: >= 100 images per cell


def test_test_seeds_appear_nowhere_else():
    # no code, script or test names a test seed: only mpsearch/apps/evidence.py holds them
    lo, hi = min(TEST_SEEDS), max(TEST_SEEDS)
    for path in list((ROOT / "mpsearch").rglob("*.py")) + list((ROOT / "scripts").glob("*.py")):
        if path.name == "evidence.py":
            continue
        for n in re.findall(r"\b\d{4}\b", path.read_text()):
            assert not lo <= int(n) <= hi, f"{path} names {n}, a test seed"


def test_significance_on_known_data():
    rng = np.random.default_rng(0)
    b = rng.lognormal(size=200)
    a = b * 0.5  # half the error on every image
    c = compare(a, b)
    assert abs(c["ratio"] - 0.5) < 1e-12 and c["hi"] < 1 and c["p"] < 1e-10
    same = compare(b, b)
    assert same["p"] == 1.0 and same["ratio"] == 1.0
    noise = compare(b * rng.lognormal(0, 0.01, 200), b)
    v = verdicts([c, compare(b, a), same, noise])
    assert v[:3] == ["better", "worse", "tie"]
    s = summary([1, 2, 3, 4, 100])
    assert s["median"] == 3 and s["mean"] == 22 and s["n"] == 5
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_budgets_between_formats():
    import mpsearch
    from mpsearch.allocation.objective import build_problem  # noqa: F401
    from mpsearch.apps.evidence import evidence_budgets
    from mpsearch.models import describe
    from mpsearch.plan import Plan

    info = describe(mpsearch.load_pipeline("default"))
    uni = {f: Plan.uniform(info, f).predicted_bytes for f in ("int8", "nvfp4", "int4")}
    b = evidence_budgets(info, uni["int4"])
    assert len(b) == 6 and all(uni["int4"] <= v <= uni["int8"] for v in b.values())
    assert sum(uni["int4"] < v < uni["nvfp4"] for v in b.values()) == 3
