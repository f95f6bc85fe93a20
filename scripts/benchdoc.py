"""Write one benchmark's section of docs/benchmarks.md (between markers), with the machine and the command."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure here is written by a script in `scripts/`; each section names the command that reproduces it
and the machine it ran on. Speeds are ratios against a baseline run side by side in the same process.
"""


def cpu_model() -> str:
    """The CPU's model name and the vector features that decide which kernels are fast (int8 dot products)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return name
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name}, {'/'.join(have) or 'no AVX2'}"


def machine() -> str:
    import torch

    return (f"{platform.system()} {platform.machine()} ({cpu_model()}), {os.cpu_count()} CPUs, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}")


def write_section(name: str, title: str, body: str, command: str) -> Path:
    """Replace (or append) the section ``name`` of docs/benchmarks.md."""
    block = (f"<!-- BEGIN {name} -->\n## {title}\n\n`{command}`  \nmachine: {machine()}\n\n{body.strip()}\n"
             f"<!-- END {name} -->")
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(DOC)
    return DOC


def publish(name: str, title: str, body: str, script: str, argv, *, doc: bool = True) -> None:
    """Print ``body`` and, unless ``doc`` is False, write it as section ``name`` with the command that made it
    (``python scripts/<script> <argv>``; ``argv`` None: this process's arguments)."""
    import sys

    command = f"python scripts/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    command = command.rstrip()
    if doc:
        write_section(name, title, body, command)
    print(body)
