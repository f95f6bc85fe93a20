"""The documentation stays true to the code: docs/design.md's worked examples run, links and named test files
exist, dotted names resolve, and no internal tracker number or out-of-repository design file is cited."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"


def _text_files() -> list[Path]:
    """The files whose prose users and contributors read: code, scripts, tests, docs, README, CI."""
    files = [ROOT / "README.md", ROOT / ".ci" / "run", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("mpsearch", "scripts", "tests"):
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return [p for p in files if p.is_file()]


def _checked_blocks(text: str) -> list[str]:
    """The python code blocks of a markdown text that follow a ``<!-- checked -->`` line."""
    return re.findall(r"<!-- checked -->\s*\n```python\n(.*?)\n```", text, flags=re.DOTALL)


def test_design_document_is_in_the_repository_and_linked():
    assert DESIGN.is_file()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/design.md)" in readme


def test_markdown_links_stay_inside_the_repository():
    bad = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not bad, bad


def test_design_worked_examples_hold():
    blocks = _checked_blocks(DESIGN.read_text(encoding="utf-8"))
    assert len(blocks) >= 5  # int8, int4, nvfp4, budgets, the cache DP
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/design.md checked block {i}", "exec"), {})  # noqa: S102


def test_checked_blocks_are_found():
    text = "a\n<!-- checked -->\n```python\nx = 1\n```\n```python\ny = 2\n```\n"
    assert _checked_blocks(text) == ["x = 1"]


def test_no_internal_tracker_numbers():
    pattern = re.compile(r"\b[Ii]ssues? #?\d+")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in _text_files()
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_no_machine_timings_in_code():
    """Timings of one machine go stale and differ per CPU: docstrings point to docs/benchmarks.md instead."""
    pattern = re.compile(r"\b\d+(\.\d+)?(-\d+(\.\d+)?)?x (faster|slower)|\b\d+(\.\d+)? (ms|s|us|seconds|minutes)\b"
                         r"( here| on| per)|takes \d[\d.]* (ms|s)\b|\(about \d[\d.]* (ms|s)\)|tens of seconds")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "mpsearch").rglob("*.py"))
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_no_design_file_outside_the_repository_is_cited():
    hits = [str(p.relative_to(ROOT)) for p in _text_files() if "DESIGN" + ".md" in p.read_text(encoding="utf-8")]
    assert not hits, hits


def test_named_test_files_exist():
    pattern = re.compile(r"\btests/[\w/]+\.py")
    missing = sorted({f"{p.relative_to(ROOT)}: {m}" for p in _text_files()
                      for m in pattern.findall(p.read_text(encoding="utf-8")) if not (ROOT / m).is_file()})
    assert not missing, missing


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            with warnings.catch_warnings():  # the README names the deprecated old module names on purpose
                warnings.simplefilter("ignore", DeprecationWarning)
                obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("folder", ["mpsearch", "scripts", "docs"])
def test_dotted_mpsearch_names_resolve(folder: str) -> None:
    """Every ``mpsearch.x.y`` a docstring or document names (in a Sphinx role or backticks) exists."""
    pattern = re.compile(r"(?::(?:mod|func|class|meth|data|attr|exc):`~?|``|`)(mpsearch(?:\.\w+)+)(?:\(\))?`")
    files = sorted((ROOT / folder).rglob("*.py" if folder != "docs" else "*.md"))
    if folder == "docs":
        files.append(ROOT / "README.md")
    seen: dict[str, bool] = {}
    bad = []
    for p in files:
        for ref in pattern.findall(p.read_text(encoding="utf-8")):
            if ref not in seen:
                seen[ref] = _resolves(ref)
            if not seen[ref]:
                bad.append(f"{p.relative_to(ROOT)}: {ref}")
    assert not bad, bad
