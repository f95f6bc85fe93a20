"""Shared pieces of the command's functions: condition lists, JSON-or-text output, tables."""

from __future__ import annotations

import json
import sys

from mpsearch.prompts import DEFAULT_EVAL_PROMPTS, choose_prompts
from mpsearch.runtime.generation import takes_prompts


def condition_list(args, pipe=None) -> list:
    """The prompts (--prompts FILE, or --prompts N built-in held-out prompts) if given; else, for a text-to-image
    ``pipe`` given no --labels of its own (the default labels), the first built-in held-out prompts; else the
    class labels. Built-in prompts are said on stderr (unless --json)."""
    spec = getattr(args, "prompts", None)
    chosen = choose_prompts(spec, "heldout") if spec is not None else None
    if chosen is None and pipe is not None and list(args.labels) == list(range(10)) and takes_prompts(pipe):
        chosen = choose_prompts(None, "heldout", default=DEFAULT_EVAL_PROMPTS)
    if chosen is None:
        return list(args.labels)
    if chosen.builtin and not getattr(args, "json", False):
        print(chosen.line, file=sys.stderr)
    return list(chosen.prompts)


def emit(args, data: dict, lines: list[str]) -> int:
    """Print ``data`` as one JSON object (--json) or ``lines`` as text; returns exit code 0."""
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print("\n".join(lines))
    return 0


def text_table(rows: list[list], header: list[str]) -> list[str]:
    """``rows`` under ``header`` as aligned text lines."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return [fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]


def budget_slug(spec: str) -> str:
    """A budget spec as a file-name part (``60%`` -> ``60pct``)."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in spec.replace("%", "pct"))
