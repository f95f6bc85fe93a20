"""What one end-to-end measurement quantizes: :class:`Unit` (layers, one format, an optional step window) and
the helpers that build lists of units.

A unit is a layer, a group of layers (a block or a role: :func:`group_units`) or a plan's layers inside one step
window (:func:`step_windows`); :data:`FP_UNIT` is full precision's own run, the reference every unit is scored
against. :func:`exhaustive_units` is the every-layer x every-format reference the cheap shortlist is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpsearch.errors import UsageError

__all__ = ["FP_UNIT", "Unit", "exhaustive_units", "group_units", "layer_units", "step_windows"]


@dataclass(frozen=True)
class Unit:
    """One end-to-end measurement: ``layers`` in ``format`` (layers that cannot take it stay fp), only at
    steps ``window = (start, stop)`` (None: every step). ``label`` names a group (default: the layer)."""

    layers: tuple[str, ...]
    format: str
    window: tuple[int, int] | None = None
    label: str = ""
    kind: str = "layer"  # "fp", "layer", "group" or "window"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.window is not None:
            start, stop = (int(x) for x in self.window)
            if not 0 <= start < stop:
                raise UsageError(f"window must be (start, stop) steps with 0 <= start < stop, got {self.window}")
            object.__setattr__(self, "window", (start, stop))
        if not self.label:
            object.__setattr__(self, "label", self.layers[0] if len(self.layers) == 1 else f"{len(self.layers)} layers")

    @property
    def key(self) -> str:
        w = "all" if self.window is None else f"{self.window[0]}-{self.window[1]}"
        return f"{self.kind}:{self.label}:{self.format}:{w}"


FP_UNIT = Unit((), "fp", None, "fp", "fp")


def layer_units(info, pairs) -> list[Unit]:
    """One unit per (layer, format) pair."""
    return [Unit((name,), fmt) for name, fmt in pairs]


def exhaustive_units(info, formats) -> list[Unit]:
    """Every layer x every eligible format of ``formats`` (the reference the cheap run is compared with)."""
    return [Unit((l.name,), f) for l in info.layers for f in formats if f != "fp" and f in l.eligible]


def group_units(info, fmt: str, by: str = "block") -> list[Unit]:
    """One unit per block (the name up to the block index) or per role, all its layers in ``fmt``."""
    groups: dict[str, list[str]] = {}
    for l in info.layers:
        if by == "role":
            key = l.role.value
        elif by == "block":
            parts = l.name.split(".")
            key = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        else:
            raise UsageError(f"group by {by!r}: expected block or role")
        if fmt in l.eligible:
            groups.setdefault(key, []).append(l.name)
    return [Unit(tuple(v), fmt, None, k, "group") for k, v in groups.items()]


def step_windows(steps: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous windows covering ``steps`` steps (fewer when there are fewer steps)."""
    count = max(1, min(int(count), steps))
    edges = np.linspace(0, steps, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
