"""Text prompts for text-to-image pipelines: the built-in set and the user's prompt files.

The built-in set (``assets/prompts/``, written for the project) has two disjoint parts: ``calibration``
prompts, which profiling measures on, and ``heldout`` prompts, which evaluation and generation use, so that a
plan is never judged on the prompts it was calibrated on. ``--prompts N`` draws a seeded subset of N prompts
from a part; ``--prompts FILE`` reads the user's file instead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mpsearch.errors import UsageError
from mpsearch.io import read_regular_text

PROMPTS_DIR = Path(__file__).resolve().parent / "assets" / "prompts"
PARTS = ("calibration", "heldout")

#: prompts a profile measures by default. Every profiling unit (one seed) generates all the prompts in one batch,
#: so the profile's work is len(seeds) x prompts images with every layer's candidates measured on each: 4 prompts
#: x the default 2 seeds keep it a small multiple of one generation (a batch of 4), while covering more than one
#: subject, style and text length. More prompts (--prompts N) cost proportionally more and rarely change a plan.
DEFAULT_PROFILE_PROMPTS = 4
#: held-out prompts ``mpsearch eval`` and ``mpsearch generate`` use by default (eval runs them under each of its
#: seeds, twice: full precision and the plan)
DEFAULT_EVAL_PROMPTS = 4

_LABELS = {"calibration": "calibration", "heldout": "held-out"}


@dataclass(frozen=True)
class PromptSet:
    """Prompts and where they came from (``source``, a phrase for messages and the profile's config)."""

    prompts: tuple[str, ...]
    source: str
    builtin: bool = False

    @property
    def line(self) -> str:
        """The one line a run prints about its prompts."""
        return f"prompts: {self.source}"


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with '#' are skipped."""
    p = Path(path)
    # a regular file read with a bounded read: a device (/dev/zero), a pipe or a giant file is refused at once
    text = read_regular_text(p, "the prompts file", UsageError, fix="give a text file, one prompt per line")
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"the prompts file {p} has no prompts; write one prompt per line")
    return prompts


@cache
def _part(part: str) -> tuple[str, ...]:
    if part not in PARTS:
        raise UsageError(f"unknown part {part!r} of the built-in prompts; expected one of {', '.join(PARTS)}")
    return tuple(read_prompts(PROMPTS_DIR / f"{part}.txt"))


def builtin_set(part: str = "calibration") -> list[str]:
    """Every prompt of one part (``calibration`` or ``heldout``) of the built-in set, in file order."""
    return list(_part(part))


def builtin_prompts(n: int, part: str = "calibration", seed: int = 0) -> PromptSet:
    """``n`` prompts of one part of the built-in set: a seeded subset, the same on every machine and Python
    (ordered by a hash of seed and prompt), and a larger ``n`` keeps every prompt of a smaller one."""
    pool = _part(part)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(pool):
        raise UsageError(f"expected a number of built-in {_LABELS[part]} prompts from 1 to {len(pool)}, got {n!r}; "
                         f"pass e.g. --prompts {DEFAULT_PROFILE_PROMPTS}, or a prompts file (one prompt per line)")
    order = sorted(pool, key=lambda p: hashlib.sha256(f"{int(seed)}\0{p}".encode()).digest())
    which = "all" if n == len(pool) else f"{n} of"
    return PromptSet(tuple(order[:n]), f"{which} the built-in {_LABELS[part]} set (seed {int(seed)})", builtin=True)


def prompt_spec(text: str) -> int | str:
    """The value of ``--prompts``: a whole number is a count of built-in prompts, anything else a file path
    (a file named like a number: write it as ./5)."""
    text = str(text).strip()
    return int(text) if text.isdigit() else text


def choose_prompts(spec: int | str | os.PathLike[str] | Sequence[str] | None, part: str = "calibration", *,
                   default: int | None = None, seed: int = 0) -> PromptSet | None:
    """The prompts ``spec`` names: None (``default`` built-in prompts, or None if no default), a count of
    built-in prompts of ``part``, a prompts file (a path; a string of digits is a count), or a list of prompts."""
    if spec is None:
        return None if default is None else builtin_prompts(default, part, seed)
    if isinstance(spec, str):
        spec = prompt_spec(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):
        return builtin_prompts(spec, part, seed)
    if isinstance(spec, (str, os.PathLike)):
        prompts = read_prompts(spec)
        return PromptSet(tuple(prompts), f"{len(prompts)} from {spec}")
    if isinstance(spec, (list, tuple)) and spec:
        bad = [p for p in spec if not isinstance(p, str) or not p.strip()]
        if bad:
            raise UsageError(f"prompts must be non-empty strings, got {bad[:3]}; give a list of text prompts")
        return PromptSet(tuple(spec), f"{len(spec)} given")
    raise UsageError(f"prompts must be a number of built-in prompts, a prompts file or a non-empty list of prompts, "
                     f"got {spec!r}; pass e.g. prompts={DEFAULT_PROFILE_PROMPTS}")
