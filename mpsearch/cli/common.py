"""Shared pieces of the command line: argument types, condition lists, JSON-or-text output, tables."""

from __future__ import annotations

import argparse
import json
import sys

from mpsearch.errors import UsageError
from mpsearch.prompts import DEFAULT_EVAL_PROMPTS, choose_prompts, prompt_spec


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


def _prompts_arg(text: str) -> int | str:
    """--prompts: a whole number N (N built-in prompts) or a prompts file."""
    spec = prompt_spec(text)
    if spec == 0:
        raise argparse.ArgumentTypeError("expected a number of built-in prompts of at least 1, or a prompts file "
                                         "(one prompt per line)")
    return spec


def _conditions(args, pipe=None) -> list:
    """The prompts (--prompts FILE, or --prompts N built-in held-out prompts) if given; else, for a text-to-image
    ``pipe`` given no --labels of its own (the default labels), the first built-in held-out prompts; else the
    class labels. Built-in prompts are said on stderr (unless --json)."""
    spec = getattr(args, "prompts", None)
    chosen = choose_prompts(spec, "heldout") if spec is not None else None
    from mpsearch.runtime.generation import takes_prompts  # imports torch: only for commands that have a pipe

    if chosen is None and pipe is not None and list(args.labels) == list(range(10)) and takes_prompts(pipe):
        chosen = choose_prompts(None, "heldout", default=DEFAULT_EVAL_PROMPTS)
    if chosen is None:
        return list(args.labels)
    if chosen.builtin and not getattr(args, "json", False):
        print(chosen.line, file=sys.stderr)
    return list(chosen.prompts)


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
