"""`mpsearch` command line: a thin argparse layer over library functions that return data.

Every command that produces a result takes ``--json`` and then prints one JSON object on stdout.
Errors print one line on stderr: exit code 2 for usage errors, 1 for failures; ``--debug`` shows the traceback
(and leaves on the other libraries' import-time messages that :mod:`.noise` otherwise drops).

The package: ``common`` (shared helpers), ``parser`` (every command and flag), ``commands`` (the command
functions, imported on first use so that ``--help`` and ``--version`` import no torch), ``noise`` (other
libraries' import-time messages, dropped), one module per group of commands (``inspecting``, ``profiling``,
``solving``, ``results``, ``exporting``); :func:`main` runs one command.
"""

from __future__ import annotations

import contextlib
import sys

from mpsearch.apps.cli.noise import silence_library_noise
from mpsearch.apps.cli.parser import build_parser
from mpsearch.errors import MpsearchError


@contextlib.contextmanager
def _quiet_libraries():
    """diffusers' own progress bars and warnings ("Loading pipeline components...") would break the
    one-line error and clutter --json runs; mpsearch reports its own progress. Restored afterwards."""
    from diffusers.utils import logging as dlogging

    loggers = [dlogging]
    try:  # text pipelines: transformers prints "Loading weights" bars for the text encoders
        from transformers.utils import logging as tlogging

        loggers.append(tlogging)
    except ImportError:
        pass
    saved = [(lg, lg.is_progress_bar_enabled(), lg.get_verbosity()) for lg in loggers]
    for lg in loggers:
        lg.disable_progress_bar()
        lg.set_verbosity_error()
    try:
        yield
    finally:
        for lg, bars, level in saved:
            lg.set_verbosity(level)
            if bars:
                lg.enable_progress_bar()


def main(argv=None) -> int:
    """Run one `mpsearch` command (``argv``: its arguments, default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "fn", None):
            build_parser().print_help()
            return 2
        if not debug:  # before the command's module imports diffusers
            silence_library_noise()
        with _quiet_libraries():
            return args.fn(args)
    except MpsearchError as e:
        if debug:
            raise
        print(f"mpsearch: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mpsearch: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if debug:
            raise
        print(f"mpsearch: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
