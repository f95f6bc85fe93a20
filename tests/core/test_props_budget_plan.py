"""Property tests (hypothesis): budget parsing and plan round trips. The formats have their own
(tests/core/test_formats_props.py)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import yaml
from conftest import tiny_dit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsearch.budget import Budget, parse_budget
from mpsearch.errors import BudgetError, PlanError
from mpsearch.formats import available_formats
from mpsearch.io import dump_yaml
from mpsearch.models import describe
from mpsearch.plan import Plan

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _case(unit, draw_case):
    return "".join(c.upper() if u else c.lower() for c, u in zip(unit, draw_case))


@FAST
@given(n=st.integers(1, 10**6), unit=st.sampled_from(sorted(UNITS)), case=st.lists(st.booleans(), min_size=3, max_size=3),
       pad=st.sampled_from(["", " ", "  "]))
def test_integer_sizes_are_exact_in_any_case_and_spacing(n, unit, case, pad):
    spec = f"{pad}{n}{pad}{_case(unit, case)}{pad}"
    assert parse_budget(spec).bytes == n * UNITS[unit]


@FAST
@given(whole=st.integers(0, 10**5), frac=st.integers(0, 999), unit=st.sampled_from(sorted(UNITS)))
def test_decimal_sizes_round_down_never_up(whole, frac, unit):
    text = f"{whole}.{frac:03d}"
    exact = Fraction(text) * UNITS[unit]
    if exact == 0:
        with pytest.raises(BudgetError):
            parse_budget(f"{text}{unit}")
        return
    # exact decimal arithmetic, rounded down: a ceiling is never rounded up past what was allowed
    assert parse_budget(f"{text}{unit}").bytes == math.floor(exact)


@FAST
@given(a=st.floats(1e-3, 1e6), b=st.floats(1e-3, 1e6), unit=st.sampled_from(sorted(UNITS)))
def test_parsing_is_monotonic(a, b, unit):
    lo, hi = sorted((a, b))
    assert parse_budget(f"{lo!r}{unit}").bytes <= parse_budget(f"{hi!r}{unit}").bytes


@FAST
@given(pct=st.floats(0.01, 100), fp=st.integers(1, 10**12))
def test_percent_is_of_full_precision_and_never_more(pct, fp):
    got = parse_budget(f"{pct!r}%", fp_bytes=fp).bytes
    assert 0 <= got <= fp
    assert abs(got - pct / 100 * fp) <= 1 + 1e-9 * fp


@FAST
@given(bits=st.floats(0.5, 64), numel=st.integers(1, 10**10), fixed=st.integers(0, 10**9))
def test_bits_count_fixed_bytes_plus_bits_per_weight(bits, numel, fixed):
    got = parse_budget(f"{bits!r}bits", fixed_bytes=fixed, quantizable_numel=numel).bytes
    assert abs(got - (fixed + bits * numel / 8)) <= 1 + 1e-9 * (fixed + bits * numel)


@FAST
@given(spec=st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                      st.none(), st.booleans()))
def test_anything_either_parses_or_is_a_budget_error(spec):
    try:
        b = parse_budget(spec, fp_bytes=10**6, fixed_bytes=10, quantizable_numel=10**5)
    except BudgetError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(b, Budget) and isinstance(b.bytes, int) and b.bytes >= 0
    assert parse_budget(b) is b


@FAST
@given(n=st.integers(1, 10**9))
def test_bytes_and_plain_numbers_agree(n):
    assert parse_budget(n).bytes == parse_budget(f"{n}B").bytes == parse_budget(str(n)).bytes == n


# ---------------------------------------------------------------- plans

INFO = describe(tiny_dit())


@st.composite
def plans(draw):
    assignment = {l.name: draw(st.sampled_from(l.eligible)) for l in INFO.layers}
    names = list(assignment)
    overrides = []
    for _ in range(draw(st.integers(0, 3))):
        start = draw(st.integers(0, 30))
        stop = draw(st.integers(start + 1, 50))
        acts = {n: draw(st.sampled_from(["fp", "quant"]))
                for n in draw(st.lists(st.sampled_from(names), max_size=4, unique=True))}
        overrides.append({"steps": [start, stop], "activations": acts})
    budget = draw(st.one_of(st.none(), st.builds(lambda b: {"spec": f"{b}B", "bytes": b}, st.integers(1, 10**9))))
    weights = draw(st.one_of(st.none(), st.text("0123456789abcdef", min_size=24, max_size=24).map("sha256:".__add__)))
    provenance = {"solver": draw(st.sampled_from(["ilp", "highs", "greedy"])),
                  "note": draw(st.text(max_size=30)), "pins": {draw(st.text(max_size=8)): "fp"}}
    return Plan.from_assignment(INFO, assignment, budget=budget, overrides=overrides, weights=weights,
                                provenance=provenance, predictions={"objective": draw(st.floats(0, 1e6))})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans())
def test_plans_round_trip_through_yaml_files(tmp_path_factory, plan):
    path = plan.save(tmp_path_factory.mktemp("p") / "plan.yaml")
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict()
    assert again == plan
    again.check_model(INFO)
    assert again.predicted_bytes == INFO.bytes_for(plan.layers)
    assert Plan.from_dict(yaml.safe_load(dump_yaml(plan.to_dict()))) == plan


JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=6),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                       max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(base=plans(), path=st.lists(st.sampled_from(["schema_version", "model", "class", "fingerprint", "weights",
                                                     "budget", "layers", "overrides", "cache", "predictions",
                                                     "bytes", "provenance", "steps", "activations", 0, 1]),
                                   min_size=1, max_size=3), value=JSONISH, delete=st.booleans())
def test_a_damaged_plan_loads_or_is_a_plan_error(base, path, value, delete):
    """Whatever one edit does to a plan's structure, loading gives a Plan or a one-line PlanError, never a crash."""
    data = base.to_dict()
    node = data
    for key in path[:-1]:
        nxt = node.get(key) if isinstance(node, dict) else (node[key] if isinstance(node, list) and
                                                            isinstance(key, int) and key < len(node) else None)
        if not isinstance(nxt, (dict, list)):
            break
        node = nxt
    key = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(key, None)
        else:
            node[key] = value
    elif isinstance(node, list) and isinstance(key, int) and key < len(node):
        node[key] = value
    try:
        plan = Plan.from_dict(data)
    except PlanError as e:
        assert "\n" not in str(e)
        return
    # what loads is a valid plan: it says the same after another trip through its YAML form, and names only
    # known formats
    assert Plan.from_dict(yaml.safe_load(dump_yaml(plan.to_dict()))) == plan
    assert set(plan.layers.values()) <= set(available_formats())
    try:
        plan.check_model(INFO)
    except PlanError as e:
        assert "\n" not in str(e)
