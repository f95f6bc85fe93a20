"""Shared helpers of the CLI smoke matrix and the hostile-input suite: run `mpsearch` in-process or as a real
process and check that what it wrote to stderr is mpsearch's own."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mpsearch.apps.cli import main

REPO = Path(__file__).resolve().parents[2]

# Python exception class names that must never reach a user: an mpsearch message is expected instead
EXCEPTION_NAMES = re.compile(r"\b(Traceback|[A-Z][A-Za-z]*(Error|Exception)|KeyboardInterrupt|StopIteration)\b")
# mpsearch's own error classes may be named in a message (none is today, but they are not crashes)
OWN_ERRORS = {"MpsearchError", "UsageError", "PlanError", "ProfileError", "ModelError", "BudgetError",
              "FormatError", "InfeasibleError", "CheckpointError", "OptionalDependencyError"}

def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`mpsearch ARGV` in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


_CHILD = """
import resource, signal, sys
if {memory}:
    resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
from mpsearch.apps.cli import main
from mpsearch.apps.cli.noise import silence_library_noise
silence_library_noise()  # as main() does before a command imports torch and diffusers
# the command modules (torch, diffusers) are imported before the clock starts: the deadline times mpsearch's own work
import mpsearch.apps.cli.exporting, mpsearch.apps.cli.inspecting, mpsearch.apps.cli.profiling  # noqa: E401
import mpsearch.apps.cli.results, mpsearch.apps.cli.solving  # noqa: E401
if {deadline}:
    signal.alarm({deadline})  # SIGALRM ends the process (exit -14) when the command runs past the deadline
code = main(sys.argv[1:])
signal.alarm(0)  # the command is done: the interpreter's shutdown (torch, numba threads) is not timed
sys.exit(code)
"""


def run_process(*argv: str, cwd, deadline: int = 0, memory: int = 0, timeout: float = 300) -> tuple[int, str, str]:
    """`mpsearch ARGV` as a real process: (exit code, stdout, stderr).

    ``deadline``: seconds the command may run once mpsearch is imported (the process is ended by SIGALRM, exit
    code -14, past it); ``memory``: its address-space limit in bytes (0: none); ``timeout``: a last resort for
    the whole process, imports included (subprocess.TimeoutExpired)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    code = _CHILD.format(deadline=int(deadline), memory=int(memory))
    r = subprocess.run([sys.executable, "-c", code, *map(str, argv)], check=False, cwd=cwd, env=env,
                       capture_output=True, text=True, errors="replace", timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def own_stderr(err: str) -> list[str]:
    """The lines of ``err`` that are not mpsearch's own (``mpsearch: ...``, ``report: ...`` or a progress bar)."""
    foreign = []
    for line in err.replace("\r", "\n").splitlines():
        if not line.strip() or re.match(r"^(mpsearch|report)[: ]", line) or re.search(r"\d+%\|", line):
            continue
        foreign.append(line)
    return foreign


def exception_names(text: str) -> list[str]:
    """Python exception class names (and "Traceback") in ``text``, other than mpsearch's own error classes."""
    return [m.group(1) for m in EXCEPTION_NAMES.finditer(text) if m.group(1) not in OWN_ERRORS]


def parse_json(out: str) -> dict:
    """The one JSON object that --json prints on stdout."""
    data = json.loads(out)
    assert isinstance(data, dict), out
    return data


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (symlinks not followed): a file's sha256 (size and mtime past 64 MiB, where
    hashing would be slow), "dir" for a folder, a link's target."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            st = p.stat()
            if st.st_size > 64 << 20:
                out[rel] = f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[rel] = h.hexdigest()
        else:
            out[rel] = "dir"
    return out
