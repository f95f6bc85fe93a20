"""Which seeds are used for what, in one place (the evidence suite, the demo and the docs read them here).

| name | seeds | used by |
| --- | --- | --- |
| ``PROFILE_SEEDS`` | 0, 1 | every method's measurement: the local profile (and its ``gn`` backward passes), HAWQ traces, AutoQuantize scores, MixDQ's per-layer generations, cache reuse costs |
| ``SEARCH_SEEDS`` | 500 (+ 501-503 validation) | choices made with generations: Optuna trials and their validation, MixDQ's budget split |
| ``DEV_SEEDS`` | 1000-1004 | development: every method change was judged on these (they were the former "held-out" seeds); `mpsearch demo`, `bench_all --split dev` and `--quick` |
| ``TEST_SEEDS`` | 7100-7109 | only the final evidence run (`scripts/bench_all.py`, default `--split test`) after the code is frozen; nothing is tuned on them |

No two sets share a seed (tests/applications/test_evidence.py checks it against every seed literal in the code).
"""  # noqa: E501 (a markdown table's rows cannot wrap)

from __future__ import annotations

from mpsearch.budget import format_bytes
from mpsearch.plan import Plan

PROFILE_SEEDS = (0, 1)
SEARCH_SEEDS = (500, 501, 502, 503)
DEV_SEEDS = (1000, 1001, 1002, 1003, 1004)
TEST_SEEDS = tuple(range(7100, 7110))
SPLITS = {"profile": PROFILE_SEEDS, "search": SEARCH_SEEDS, "dev": DEV_SEEDS, "test": TEST_SEEDS}

__all__ = ["PROFILE_SEEDS", "SEARCH_SEEDS", "DEV_SEEDS", "TEST_SEEDS", "SPLITS", "evidence_budgets"]


#: the evidence budgets' names, lowest first (a model keeps those inside its feasible range)
BUDGET_NAMES = ("min+25% to nvfp4", "min+50% to nvfp4", "min+75% to nvfp4", "=nvfp4", "nvfp4+33% to int8",
                "nvfp4+67% to int8")


def evidence_budgets(info, min_bytes: int) -> dict[str, int]:
    """Byte budgets across a model's feasible range, computed from the model, none above uniform INT8:
    three between the smallest feasible plan (``min_bytes``) and uniform NVFP4 (where mixing 4-bit formats
    matters most; on a model where INT4 fits every layer the smallest plan is uniform INT4), uniform NVFP4
    itself, and two between uniform NVFP4 and uniform INT8. Names say where each lies."""
    uni = {f: Plan.uniform(info, f).predicted_bytes for f in ("int8", "nvfp4")}
    lo, mid, hi = int(min_bytes), uni["nvfp4"], uni["int8"]
    out = {}
    for q in (0.25, 0.5, 0.75):
        out[f"min+{q:.0%} to nvfp4"] = lo + int((mid - lo) * q)
    out["=nvfp4"] = mid
    for q in (1 / 3, 2 / 3):
        out[f"nvfp4+{q:.0%} to int8"] = mid + int((hi - mid) * q)
    return {k: v for k, v in sorted(out.items(), key=lambda kv: kv[1]) if lo <= v <= hi}


def describe_budget(name: str, nbytes: int) -> str:
    return f"{name} ({format_bytes(nbytes)})"
