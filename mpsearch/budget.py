"""Budget strings: `4GB` (10^9), `4GiB` (2^30), `MB`/`MiB`/`KB`/`KiB`/`B`, `60%` of full precision, `4.5bits`.

A budget counts every byte of the denoiser after the plan: packed weights with their scales, plus the
parameters and buffers that stay unquantized (``fixed_bytes``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from mpsearch.errors import BudgetError

_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([a-z%]*)\s*$", re.IGNORECASE)
_HELP = "use e.g. 600KB, 4GB, 4GiB, 60% or 4.5bits"


@dataclass(frozen=True)
class Budget:
    """A parsed budget: what the user wrote and the exact number of bytes it means for this model."""

    spec: str
    bytes: int

    def to_dict(self) -> dict:
        """The plan's ``budget`` record: ``{spec, bytes}``."""
        return {"spec": self.spec, "bytes": self.bytes}


def parse_budget(spec: Budget | str | float | None, *, fp_bytes: int | None = None, fixed_bytes: int = 0,
                 quantizable_numel: int | None = None) -> Budget:
    """Parse ``spec`` into exact bytes.

    ``fp_bytes`` (the denoiser at full precision) is needed for ``%``; ``fixed_bytes`` and
    ``quantizable_numel`` (elements of the candidate weights) for ``bits``.
    """
    if isinstance(spec, Budget):
        return spec
    if isinstance(spec, bool) or spec is None:
        raise BudgetError(f"budget {spec!r} is not a size; {_HELP}")
    if isinstance(spec, (int, float)):
        value, unit, text = float(spec), "b", str(spec)
        number = repr(spec)
    else:
        text = str(spec).strip()
        m = _RE.match(text)
        if not m:
            raise BudgetError(f"budget {text!r} does not parse; {_HELP}")
        value, unit = float(m.group(1)), m.group(2).lower()
        number = m.group(1)
    if not math.isfinite(value):
        raise BudgetError(f"budget {text!r} is not a finite positive number; {_HELP}")
    if value <= 0:
        raise BudgetError(f"budget {text!r} must be a positive size; {_HELP}")
    exact = Fraction(number)  # exact decimal arithmetic: 2048.001TiB must not round up by a byte
    if unit in ("", "b") or unit in _UNITS:
        nbytes = exact * _UNITS[unit or "b"]
    elif unit == "%":
        if fp_bytes is None:
            raise BudgetError(
                f"budget {text!r} is relative, but the model's full-precision size is unknown; give bytes"
            )
        nbytes = exact / 100 * fp_bytes
    elif unit in ("bit", "bits"):
        if quantizable_numel is None:
            raise BudgetError(f"budget {text!r} is in bits per weight, but the model is unknown; give bytes")
        if value > 64:
            raise BudgetError(f"budget {text!r}: {value:g} bits per weight is more than any format stores; {_HELP}")
        nbytes = fixed_bytes + exact * quantizable_numel / 8
    else:
        raise BudgetError(f"budget {text!r} has an unknown unit {unit!r}; {_HELP}")
    # floor: a budget is a ceiling, never rounded up past what the user allowed
    return Budget(spec=text, bytes=math.floor(nbytes))


def format_bytes(n: int | float) -> str:
    """``612345 -> '612.3 KB'``: decimal units (1 KB = 1000 B), as budgets are written."""
    n = float(n)
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"
