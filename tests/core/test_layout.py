"""The layout shows the flow: imports between mpsearch's modules go one way only,
core <- runtime <- profiling <- allocation <- applications, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "mpsearch"
# the core every stage may use; ``classifier`` is the shipped digit classifier, the default feature space of the
# content and quality metrics (model weights like a metric's, importing nothing but errors)
CORE = {"formats", "models", "offload", "layer_types", "plan", "budget", "metrics", "errors", "io", "version", "cache_units",
        "cache_section", "classifier", "prompts", "quantizers"}
STAGES = {"runtime": 1, "profiling": 2, "allocation": 3}
APPLICATION = 4


def level(module: str) -> int:
    """The stage a dotted module name belongs to: 0 core, 1 runtime, 2 profiling, 3 allocation, 4 applications."""
    parts = module.split(".")
    if parts[0] != "mpsearch":
        raise ValueError(module)
    if len(parts) == 1:
        return APPLICATION  # the package's own __init__: lazy public names over every stage
    head = parts[1]
    if head in CORE:
        return 0
    return STAGES.get(head, APPLICATION)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported mpsearch module, inside a function) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, in_function) for a in child.names if a.name.startswith("mpsearch"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("mpsearch"):
                    found.append((child.lineno, target, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def all_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def violations() -> list[str]:
    bad = []
    for path in all_modules():
        src = module_name(path)
        for line, target, _ in imports(path):
            if level(target) > level(src):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} {src} (stage {level(src)}) imports "
                           f"{target} (stage {level(target)})")
    return bad


def test_levels_of_known_modules():
    assert level("mpsearch.plan") == level("mpsearch.formats.nvfp4") == 0
    # the quantizer variants are pure algorithms over formats: the runtime and the profiler both use them
    assert level("mpsearch.quantizers.gptq") == level("mpsearch.quantizers") == 0
    assert level("mpsearch.runtime.executor") == 1
    assert level("mpsearch.profiling.store") == 2
    assert level("mpsearch.allocation.solvers.ilp_pulp") == 3
    assert level("mpsearch.apps.cli.solving") == level("mpsearch.apps.report") == APPLICATION


def test_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "mpsearch" / "runtime"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("def f():\n    from ..allocation import solving\n    import mpsearch.profiling.store\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "mpsearch")
    found = imports(pkg / "bad.py")
    assert found == [(2, "mpsearch.allocation", True), (3, "mpsearch.profiling.store", True)]
    assert len(violations()) == 2


def test_imports_follow_the_flow():
    bad = violations()
    assert not bad, "imports against the flow (core <- runtime <- profiling <- allocation <- applications):\n" + \
        "\n".join(bad)


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_function_level_imports_only_for_optional_dependencies(path):
    """An mpsearch module imported inside a function is a hidden edge, unless the line declares it ``# lazy``
    (kept off a light path, e.g. solving a profile without the runtime's kernels); the flow check above counts
    those edges too."""
    source = path.read_text().splitlines()
    inner = [f"{line}: {target}" for line, target, in_function in imports(path)
             if in_function and "# lazy" not in source[line - 1]]
    assert not inner, f"{path.name} imports mpsearch modules inside functions (hidden edges): {inner}"


def test_a_lazy_import_must_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "mpsearch")
    (tmp_path / "mpsearch" / "runtime").mkdir(parents=True)
    bad = tmp_path / "mpsearch" / "runtime" / "m.py"
    bad.write_text("def f():\n    import mpsearch.runtime.qmodules\n\n\ndef g():\n    import mpsearch.runtime.steps  # lazy\n")
    found = [(line, target) for line, target, in_function in imports(bad) if in_function]
    assert found == [(2, "mpsearch.runtime.qmodules"), (6, "mpsearch.runtime.steps")]
    with pytest.raises(AssertionError, match="qmodules"):
        test_function_level_imports_only_for_optional_dependencies(bad)
