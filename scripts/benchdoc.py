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


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


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
