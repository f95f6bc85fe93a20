"""Shared pieces of the command line: argument types, condition lists, JSON-or-text output, tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpsearch.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 0/2), got {text!r}") from None
    return i, n


def _share(text: str) -> float:
    """A share in (0, 1] (e.g. of the blocks to checkpoint)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], e.g. 0.5, got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], e.g. 0.5, got {text!r}")
    return v


def read_prompts(path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with '#' are skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the prompts file {p} ({e.strerror or e}); give a text file, one prompt per line") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"the prompts file {p} has no prompts; write one prompt per line")
    return prompts


def _conditions(args) -> list:
    """The prompts (--prompts FILE) if given, else the class labels."""
    return read_prompts(args.prompts) if getattr(args, "prompts", None) else list(args.labels)


def _emit(args, data: dict, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print("\n".join(lines))
    return 0


def _table(rows: list[list], header: list[str]) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return [fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]


def _budget_slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in spec.replace("%", "pct"))
