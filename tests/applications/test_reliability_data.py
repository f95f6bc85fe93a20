"""No code from data: a plan, a profile or a model folder cannot make mpsearch import or run anything.

A sentinel module on sys.path writes a marker file when imported; every payload below names it (or another
way to run code) and must be refused with an mpsearch error while the marker never appears.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml
from conftest import _scheduler, tiny_dit

from mpsearch.apps.pipeline import DigitsPipeline, load_pipeline
from mpsearch.apps.profile import profile
from mpsearch.errors import MpsearchError, PlanError, ProfileError
from mpsearch.plan import Plan
from mpsearch.profiling.store import Profile

ROOT = Path(__file__).resolve().parents[2]
SENTINEL = "mpsearch_sentinel_never_import"


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    """A module that, if anything imports or calls it, leaves tmp_path/MARKER behind."""
    marker = tmp_path / "MARKER"
    src = tmp_path / "mods"
    src.mkdir()
    (src / f"{SENTINEL}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "def run(*a, **k):\n"
        f"    open({str(marker)!r}, 'w').write('called')\n"
        "class Evil:\n"
        "    def __init__(self, *a, **k):\n"
        f"        open({str(marker)!r}, 'w').write('constructed')\n")
    monkeypatch.syspath_prepend(str(src))
    yield marker
    assert not marker.exists(), "data made mpsearch run code"
    assert SENTINEL not in sys.modules


# pickle protocol 0, written by hand (making it with pickle would import the sentinel here):
# GLOBAL sentinel.run, an empty tuple, REDUCE -> unpickling imports the sentinel and calls run()
PICKLE_PAYLOAD = f"c{SENTINEL}\nrun\n(tR.".encode()


YAML_PAYLOADS = [
    f"schema_version: !!python/object/apply:{SENTINEL}.run []\n",
    f"schema_version: !!python/name:{SENTINEL}.run\n",
    f"schema_version: !!python/module:{SENTINEL}\n",
    f"schema_version: !!python/object/new:{SENTINEL}.Evil []\n",
    f"schema_version: !!python/object:{SENTINEL}.Evil {{}}\n",
    f"!!python/object/apply:{SENTINEL}.run\nargs: []\n",
    f"model: {{class: !!python/name:{SENTINEL}.Evil , fingerprint: x}}\n",
]


@pytest.mark.parametrize("text", YAML_PAYLOADS)
def test_yaml_python_tags_in_a_plan_are_refused(tmp_path, sentinel, text):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PlanError, match="not valid YAML"):
        Plan.load(tmp_path / "p.yaml")


def test_code_looking_strings_in_a_plan_stay_strings(tmp_path, sentinel):
    info_plan = Plan.uniform(DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit()), "int8").to_dict()
    name = next(iter(info_plan["layers"]))
    for fmt in [f"__import__('{SENTINEL}').run()", f"{SENTINEL}.run", "!!python/name:os.system"]:
        data = json.loads(json.dumps(info_plan))
        data["layers"][name] = fmt
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(PlanError, match="unknown format"):
            Plan.load(tmp_path / "p.yaml")


@pytest.fixture
def prof_path(tmp_path, dit_pipe):
    path = tmp_path / "p.sqlite"
    profile(dit_pipe, out=path, steps=2, seeds=(0,), labels=(1,), progress=False)
    return path


def _edit(path, *sql, params=()):
    conn = sqlite3.connect(path)
    with conn:
        for s in sql:
            conn.execute(s, params) if params else conn.execute(s)
    conn.close()


def test_pickle_bytes_in_a_profile_are_not_unpickled(prof_path, sentinel):
    _edit(prof_path, "UPDATE meta SET value = ? WHERE key = 'model'", params=(PICKLE_PAYLOAD,))
    with pytest.raises(ProfileError, match="corrupt meta"):
        Profile.load(prof_path)


def test_code_looking_strings_in_a_profile_stay_strings(prof_path, sentinel):
    meta = dict(sqlite3.connect(prof_path).execute("SELECT key, value FROM meta").fetchall())
    model = json.loads(meta["model"])
    model["class"] = f"__import__('{SENTINEL}').run()"
    model["layers"][0]["name"] = "x'); DROP TABLE units; --"
    _edit(prof_path, "UPDATE meta SET value = ? WHERE key = 'model'", params=(json.dumps(model),))
    prof = Profile.load(prof_path)  # plain data: loads, names are just strings
    assert prof.info.denoiser_class.startswith("__import__") and prof.units == (0,)


@pytest.mark.parametrize("sql", [
    "CREATE TRIGGER t AFTER INSERT ON units BEGIN DELETE FROM local; END",
    "CREATE VIEW v AS SELECT * FROM local",
])
def test_sql_stored_in_a_profile_is_refused(prof_path, dit_pipe, sql):
    _edit(prof_path, sql)
    with pytest.raises(ProfileError, match="no mpsearch profile has"):
        Profile.load(prof_path)
    with pytest.raises(ProfileError, match="no mpsearch profile has"):  # resuming would run the trigger
        profile(dit_pipe, out=prof_path, steps=2, seeds=(0, 1), labels=(1,), progress=False)


def test_a_view_posing_as_a_table_is_not_a_profile(tmp_path):
    conn = sqlite3.connect(tmp_path / "v.sqlite")
    with conn:
        conn.execute("CREATE TABLE t (a)")
        for name in ("meta", "units", "local", "block_change"):
            conn.execute(f"CREATE VIEW {name} AS SELECT * FROM t")
    conn.close()
    with pytest.raises(ProfileError):
        Profile.load(tmp_path / "v.sqlite")


def _folder(tmp_path):
    d = tmp_path / "m"
    DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit()).save_pretrained(d)
    return d


def test_a_model_folder_cannot_name_a_module_to_import(tmp_path, sentinel):
    d = _folder(tmp_path)
    index = json.loads((d / "model_index.json").read_text())
    index["transformer"] = [SENTINEL, "Evil"]
    (d / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(MpsearchError, match="cannot load"):
        load_pipeline(d)


def test_pickled_weights_are_never_read(tmp_path, sentinel):
    d = _folder(tmp_path)
    weights = d / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    (d / "transformer" / "diffusion_pytorch_model.bin").write_bytes(PICKLE_PAYLOAD)
    with pytest.raises(MpsearchError, match="cannot load"):
        load_pipeline(d)


# ---------------------------------------------------------------- the source itself

FORBIDDEN = re.compile(
    r"\bimport\s+(pickle|marshal|shelve|dill|cloudpickle|joblib)\b|\bfrom\s+(pickle|marshal|shelve|dill)\b|"
    r"\bpickle\.|torch\.load\(|\byaml\.load\(|\bunsafe_load\b|\byaml\.(Full|Unsafe)?Loader\b|"
    r"(?<![.\w])(eval|exec|compile)\(|enable_load_extension|load_extension\(|allow_pickle\s*=\s*True|"
    r"weights_only\s*=\s*False|trust_remote_code\s*=\s*True|use_safetensors\s*=\s*False|"
    r"os\.system\(|\b__import__\((?![\"'])|import_module\((?![\"'f.])")  # imports of names that come from data


def _sources():
    files = sorted((ROOT / "mpsearch").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    assert len(files) > 20
    return files


def test_no_pickle_no_eval_no_unsafe_loading_anywhere_in_the_package():
    hits = []
    for f in _sources():
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if FORBIDDEN.search(code):
                hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


def test_yaml_is_read_only_through_safe_loading():
    readers = [f for f in _sources() if re.search(r"\byaml\.\w*load", f.read_text())]
    for f in readers:
        calls = re.findall(r"\byaml\.(\w*load\w*)\(", f.read_text())
        assert set(calls) <= {"safe_load", "safe_load_all"}, (f, calls)


def test_models_are_read_from_safetensors_only():
    text = (ROOT / "mpsearch" / "apps" / "pipeline.py").read_text()
    assert "use_safetensors=True" in text and "local_files_only=True" in text
