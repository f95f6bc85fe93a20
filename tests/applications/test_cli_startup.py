"""The `mpsearch` command as a user starts it: a fresh process, its stderr and what it imports."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpsearch.apps.cli.noise import NOISE, silence_library_noise
from mpsearch.apps.cli.parser import build_parser
from mpsearch.formats.variant import VARIANTS

ROOT = Path(__file__).resolve().parents[2]


def _python(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["inspect"]])
def test_commands_show_no_library_messages_on_stderr(argv):
    r = _python("-m", "mpsearch", *argv)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout


def test_help_and_version_import_no_heavy_library():
    code = ("import sys\nfrom mpsearch.apps.cli import main\n"
            "for argv in (['--help'], ['--version'], ['solve', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "import json\n"
            "print(json.dumps(sorted(m for m in ('torch', 'diffusers', 'torchao', 'numpy') if m in sys.modules)))\n")
    r = _python("-c", code)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == []


def test_noise_filters_drop_only_their_messages(caplog):
    silence_library_noise()
    silence_library_noise()  # once per logger, however often called
    name = "torchao"
    assert sum(1 for f in logging.getLogger(name).filters if type(f).__name__ == "_DropMessages") == 1
    with caplog.at_level(logging.WARNING, logger=name):
        logging.getLogger(name).warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
        logging.getLogger(name).warning("something torchao wants the user to know")
    assert [r.getMessage() for r in caplog.records] == ["something torchao wants the user to know"]
    assert set(NOISE) >= {"torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"}


def test_profile_help_names_every_variant():
    """The --variants help lists the variants by hand (the parser imports no torch); it must name them all."""
    profile = build_parser()._subparsers._group_actions[0].choices["profile"]
    help_text = next(a.help for a in profile._actions if "--variants" in a.option_strings)
    listed = help_text.split("(")[1].split(")")[0].split(", ")
    assert listed == list(VARIANTS)
