"""Argument types and the parser class of the command line. Light on purpose: `mpsearch --help` imports only
this, the parser and the prompt set, never torch or diffusers."""

from __future__ import annotations

import argparse

from mpsearch.errors import UsageError
from mpsearch.prompts import prompt_spec


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one-line UsageError (exit code 2)."""

    def error(self, message):  # one line, exit code 2
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def int_list(text: str) -> list[int]:
    """Comma-separated integers (at least one)."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


#: the largest seed the command line takes: seeds are 32-bit, as in numpy and most samplers
MAX_SEED = 2**32 - 1


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds: integers from 0 to :data:`MAX_SEED` (at least one)."""
    vals = int_list(text)
    bad = [v for v in vals if not 0 <= v <= MAX_SEED]
    if bad:
        raise argparse.ArgumentTypeError(f"expected seeds from 0 to {MAX_SEED:,}, got {bad[0]}; pass e.g. 0,1")
    return vals


def str_list(text: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def shard(text: str) -> tuple[int, int]:
    """A shard ``i/n``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 0/2), got {text!r}") from None
    return i, n


def share(text: str) -> float:
    """A share in (0, 1] (e.g. of the blocks to checkpoint)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], e.g. 0.5, got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], e.g. 0.5, got {text!r}")
    return v


def prompts_arg(text: str) -> int | str:
    """--prompts: a whole number N (N built-in prompts) or a prompts file."""
    spec = prompt_spec(text)
    if spec == 0:
        raise argparse.ArgumentTypeError("expected a number of built-in prompts of at least 1, or a prompts file "
                                         "(one prompt per line)")
    return spec


def generations(value: str) -> float:
    """``--max-time``: a positive number of generations, ``3`` or ``3x``."""
    try:
        f = float(value.strip().rstrip("xX"))
    except ValueError:
        f = float("nan")
    if not f > 0 or f == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of generations, e.g. 3 or 3x, got {value!r}")
    return f
