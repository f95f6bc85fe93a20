"""The command functions, each imported on its first call: building the parser and answering ``--help`` or
``--version`` import no torch, diffusers or torchao (their import takes seconds)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

# command function -> the module of mpsearch.apps.cli that defines it
_WHERE = {
    "cmd_inspect": "inspecting", "cmd_generate": "inspecting", "cmd_export": "exporting",
    "cmd_profile": "profiling", "cmd_profile_merge": "profiling", "cmd_solve": "solving",
    "cmd_eval": "results", "cmd_demo": "results", "cmd_report": "results",
}


def _lazy(name: str) -> Callable[..., int]:
    def run(args) -> int:
        return getattr(importlib.import_module(f"mpsearch.apps.cli.{_WHERE[name]}"), name)(args)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"`{name}` of mpsearch.apps.cli.{_WHERE[name]}, imported on the first call."
    return run


cmd_inspect = _lazy("cmd_inspect")
cmd_generate = _lazy("cmd_generate")
cmd_export = _lazy("cmd_export")
cmd_profile = _lazy("cmd_profile")
cmd_profile_merge = _lazy("cmd_profile_merge")
cmd_solve = _lazy("cmd_solve")
cmd_eval = _lazy("cmd_eval")
cmd_demo = _lazy("cmd_demo")
cmd_report = _lazy("cmd_report")
