import pytest

from mpsearch.budget import format_bytes, parse_budget
from mpsearch.errors import BudgetError, UsageError


@pytest.mark.parametrize("spec,expected", [
    ("4GB", 4 * 10**9), ("4GiB", 4 * 2**30), ("600KB", 600_000), ("600 kb", 600_000), ("1.5MB", 1_500_000),
    ("2MiB", 2 * 2**20), ("3KiB", 3072), ("123B", 123), ("123", 123), (1000, 1000), ("1e3B", 1000),
])
def test_sizes(spec, expected):
    assert parse_budget(spec).bytes == expected


def test_relative_and_bits():
    assert parse_budget("60%", fp_bytes=1000).bytes == 600
    assert parse_budget("100%", fp_bytes=1001).bytes == 1001
    # 4.5 bits per quantizable weight on 1000 weights plus 100 fixed bytes
    assert parse_budget("4.5bits", fixed_bytes=100, quantizable_numel=1000).bytes == 100 + 562


@pytest.mark.parametrize("spec", ["", "abc", "-4GB", "0", "4XB", "nan", "inf", "4GB4", None, True, "70bits"])
def test_bad_budgets_are_one_line_usage_errors(spec):
    with pytest.raises(BudgetError) as e:
        parse_budget(spec, fp_bytes=1000, quantizable_numel=10)
    assert isinstance(e.value, UsageError) and "\n" not in str(e.value)


def test_relative_needs_model():
    with pytest.raises(BudgetError, match="full-precision size"):
        parse_budget("50%")


def test_format_bytes():
    assert format_bytes(612_345) == "612.3 KB"
    assert format_bytes(12) == "12 B"
