"""`mpsearch solve` on an existing profile imports no pipeline machinery (diffusers, numba, transformers,
torchao, the runtime kernels, the profiler): they took seconds of a 0.1 s solve. Checked by what a fresh process
has imported after the command, not by timing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpsearch.apps.cli import main

ROOT = Path(__file__).resolve().parents[2]

#: what the plain solve of a profile must not import
HEAVY = ("diffusers", "numba", "transformers", "torchao", "mpsearch.runtime.kernels", "mpsearch.runtime.executor",
         "mpsearch.profiling.profiler", "mpsearch.apps.pipeline", "mpsearch.allocation.joint",
         "mpsearch.allocation.refine")

# argv: the modules to look for (JSON), then the command's arguments
_CHILD = """
import json, sys
from mpsearch.apps.cli import main
heavy = json.loads(sys.argv[1])
code = main(sys.argv[2:])
print(json.dumps({"code": code, "heavy": sorted(m for m in heavy if m in sys.modules)}))
"""


def _python(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("solve-imports") / "p.sqlite"
    assert main(["profile", "--steps", "2", "--seeds", "0", "--labels", "1", "--exact", "--out", str(path),
                 "--json"]) == 0
    return path


def test_solve_on_a_profile_imports_no_pipeline_machinery(profile, tmp_path, capsys):
    capsys.readouterr()
    r = _python("-c", _CHILD, json.dumps(HEAVY), "solve", "--profile", str(profile), "--budget", "60%", "--out",
                "plan.yaml", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    solved, seen = (json.loads(line) for line in r.stdout.splitlines()[-2:])
    assert seen == {"code": 0, "heavy": []}
    assert solved["status"] == "optimal" and (tmp_path / "plan.yaml").is_file()
    # the same plan as the command run in this process (where diffusers and the rest are already imported)
    assert main(["solve", "--profile", str(profile), "--budget", "60%", "--out", str(tmp_path / "here.yaml"),
                 "--json"]) == 0
    here = json.loads(capsys.readouterr().out)
    assert {k: here[k] for k in ("bytes", "formats", "objective", "status")} == \
        {k: solved[k] for k in ("bytes", "formats", "objective", "status")}
    from mpsearch.plan import Plan

    mine, theirs = Plan.load(tmp_path / "here.yaml"), Plan.load(tmp_path / "plan.yaml")
    assert mine.layers == theirs.layers
    for key in ("mpsearch", "torch", "diffusers", "python"):  # diffusers' version too, not imported there
        assert mine.provenance[key] == theirs.provenance[key]


def test_plan_versions_name_diffusers_without_importing_it():
    code = ("import json, sys\nfrom mpsearch.plan import versions\nv = versions()\n"
            "print(json.dumps([v, 'diffusers' in sys.modules]))\nimport diffusers, torch\n"
            "print(json.dumps([diffusers.__version__, torch.__version__]))\n")
    r = _python("-c", code)
    assert r.returncode == 0, r.stderr
    (v, imported), (diffusers_version, torch_version) = (json.loads(l) for l in r.stdout.splitlines()[-2:])
    assert not imported
    assert v["diffusers"] == diffusers_version and v["torch"] == torch_version


def test_libraries_imported_during_a_command_are_quieted_then_restored():
    """main() quiets diffusers' and transformers' logging as soon as the command imports them (before: it imported
    both, seconds, before every command); afterwards they are as they were."""
    code = """
import json, sys
from mpsearch.apps.cli.noise import quiet_libraries
assert "diffusers" not in sys.modules and "transformers" not in sys.modules
seen = {}
with quiet_libraries():
    from diffusers.utils import logging as d
    from transformers.utils import logging as t
    seen["inside"] = [d.get_verbosity(), d.is_progress_bar_enabled(), t.get_verbosity(), t.is_progress_bar_enabled()]
seen["after"] = [d.get_verbosity(), d.is_progress_bar_enabled(), t.get_verbosity(), t.is_progress_bar_enabled()]
with quiet_libraries():  # imported already: quieted at once
    seen["again"] = [d.get_verbosity(), d.is_progress_bar_enabled(), t.get_verbosity(), t.is_progress_bar_enabled()]
import diffusers.utils
seen["loader"] = type(diffusers.utils.__spec__.loader).__module__
print(json.dumps(seen))
"""
    r = _python("-c", code)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.splitlines()[-1])
    import logging

    assert seen["inside"] == seen["again"] == [logging.ERROR, False, logging.ERROR, False]
    assert seen["after"] == [logging.WARNING, True, logging.WARNING, True]
    assert not seen["loader"].startswith("mpsearch")  # the module keeps its own loader
