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


def _section(number: int) -> str:
    """The text of docs/design.md's section ``## <number>.`` (up to the next ``## `` heading)."""
    text = DESIGN.read_text(encoding="utf-8")
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, flags=re.DOTALL | re.MULTILINE)
    assert match, f"docs/design.md has no section {number}"
    return match.group(0)


def _ticked(text: str) -> set[str]:
    """Every word in single backticks in ``text``."""
    return set(re.findall(r"`([^`\n]+)`", text))


def test_design_layout_is_the_package_as_it_is():
    """The layout table lists every entry of ``ls mpsearch/`` and names no module or folder that is not there."""
    layout = _section(1).split("### Package layout", 1)[1]
    rows = [line.split("|")[1] for line in layout.splitlines() if line.startswith("| `")]
    listed = set().union(*(_ticked(r) for r in rows))
    package = ROOT / "mpsearch"
    entries = {p.name + ("/" if p.is_dir() else "") for p in package.iterdir()
               if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")}
    assert entries - listed == set(), "layout misses " + ", ".join(sorted(entries - listed))
    assert listed - entries == set(), "layout names what is not in mpsearch/: " + ", ".join(sorted(listed - entries))
    apps = next(line for line in layout.splitlines() if line.startswith("| `apps/`"))
    modules = {p.stem if p.suffix == ".py" else p.name + "/" for p in (package / "apps").iterdir()
               if p.name not in ("__init__.py", "__pycache__")}
    assert modules <= _ticked(apps), "apps row misses " + ", ".join(sorted(modules - _ticked(apps)))


def test_design_profile_section_names_every_table_and_the_schema():
    from mpsearch.profiling.store.files import lock_path
    from mpsearch.profiling.store.schema import SCHEMA, TABLES

    section = _section(5)
    assert set(TABLES) <= _ticked(section), sorted(set(TABLES) - _ticked(section))
    assert f"schema {SCHEMA}" in section.lower() and "migrate" in section
    assert lock_path("x").name == "x.lock" and "`<file>.lock`" in section
    for name in ("missing_units()", "check_complete()"):
        assert f"Profile.{name}" in section


def test_design_names_the_solver_engines():
    from mpsearch.allocation.defaults import DEFAULT_SOLVER
    from mpsearch.allocation.solvers import available_solvers

    section = _section(6)
    assert set(available_solvers()) <= _ticked(section), sorted(set(available_solvers()) - _ticked(section))
    assert f"`{DEFAULT_SOLVER}`" in section and "SolveConfig" in section
    assert not re.search(r"\bilp\b", DESIGN.read_text(encoding="utf-8")), "the engine 'ilp' is now 'cbc'/'highs'"


def test_design_plan_section_states_the_keys_and_limits():
    from mpsearch import plan
    from mpsearch.cache_section import OPTIONAL, REQUIRED
    from mpsearch.io import MAX_YAML_BYTES

    section = _section(8)
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| `")}
    keys = {k for r in rows for k in _ticked(r)}
    assert set(plan._TOP_KEYS) | set(REQUIRED) | set(OPTIONAL) <= keys
    assert f"{MAX_YAML_BYTES // 2**20} MiB" in section
    assert f"{plan.MAX_STEPS:,}" in section and f"{plan.MAX_NODES:,}" in section
    for refused in ("anchors", "aliases", "duplicate keys", "regular file"):
        assert refused in section, refused
    for record in ("LayerAssignment", "ActivationOverride", "CacheSection", "Predictions"):
        assert f"`{record}`" in section, record


def test_design_exported_folder_section_is_the_manifest_format():
    from mpsearch.runtime import manifest

    section = _section(10)
    assert f"`format_version` ({manifest.FORMAT_VERSION})" in section
    assert set(manifest._TOP) <= _ticked(section), sorted(set(manifest._TOP) - _ticked(section))
    assert "BLAKE3" in section and "sha256" not in section.lower()


def test_design_public_names_are_the_package_names():
    import mpsearch

    section = _section(11)
    named = {re.match(r"\w+", t).group(0) for t in _ticked(section) if re.match(r"\w+", t)}
    expected = set(mpsearch._LAZY) | set(mpsearch._SUBMODULES)
    assert expected <= named, sorted(expected - named)
    flat = " ".join(section.split())
    for name, module in mpsearch._LAZY.items():  # "`a` from `m`", "`a` and `b` from `m`"
        said = rf"`{name}` (?:and `\w+` )?from `{re.escape(module)}`|`\w+` and `{name}` from `{re.escape(module)}`"
        assert re.search(said, flat), f"section 11 does not say {name} comes from {module}"
