"""`mpsearch` command line: a thin argparse layer over library functions that return data.

Every command that produces a result takes ``--json`` and then prints one JSON object on stdout.
Errors print one line on stderr: exit code 2 for usage errors, 1 for failures; ``--debug`` shows the traceback
(and leaves on the other libraries' import-time messages that :mod:`.noise` otherwise drops).

The package: ``common`` (shared helpers), ``parser`` (every command and flag), ``commands`` (the command
functions, imported on first use so that ``--help`` and ``--version`` import no torch), ``noise`` (other
libraries' messages: import-time ones dropped, progress bars and warnings off while a command runs), one module
per group of commands (``inspecting``, ``profiling``, ``solving``, ``results``, ``exporting``); :func:`main` runs
one command.
"""

from __future__ import annotations

import sys

from mpsearch.apps.cli.noise import quiet_libraries, silence_library_noise
from mpsearch.apps.cli.parser import build_parser
from mpsearch.errors import MpsearchError


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
        with quiet_libraries():
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
