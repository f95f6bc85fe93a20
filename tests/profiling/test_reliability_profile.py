"""Profiling survives SIGKILL and splits into shards: resumed and merged files equal one uninterrupted run.

The runs are real `python -m mpsearch profile` processes on a tiny DiT pipeline folder; tables are compared
exactly (every stored number, bit for bit), and the loaded Profiles have the same digest.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import _scheduler, tiny_dit, tiny_unet

from mpsearch.apps.cli import main
from mpsearch.apps.pipeline import DigitsPipeline
from mpsearch.apps.profile import profile
from mpsearch.profiling.store import Profile, merge_profiles

SEEDS = "0,1,2,3,4,5"
ARGS = ["--steps", "3", "--seeds", SEEDS, "--labels", "0,1", "--formats", "int8,nvfp4,int4"]


def _cmd(model, out, *extra):
    return [sys.executable, "-m", "mpsearch", "profile", "--model", str(model), "--out", str(out), *ARGS, *extra,
            "--json"]


def _env():
    # one thread: the numbers must not depend on how busy the machine is
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(model, out, *extra):
    r = subprocess.run(_cmd(model, out, *extra), capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def tables(path) -> dict:
    """Every table's content, sorted; the per-unit wall times are left out (they are timings)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            "meta": sorted((k, json.loads(v)) for k, v in conn.execute("SELECT key, value FROM meta")),
            "units": sorted(u for (u,) in conn.execute("SELECT unit FROM units")),
            "local": sorted(conn.execute("SELECT * FROM local")),
            "block_change": sorted(conn.execute("SELECT * FROM block_change")),
        }
    finally:
        conn.close()


def _finished_units(path) -> int:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05)
        try:
            return conn.execute("SELECT COUNT(*) FROM units").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return -1  # not created yet, or being written


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit()).save_pretrained(d / "tiny")
    return d


@pytest.fixture(scope="module")
def reference(folder):
    out = folder / "reference.sqlite"
    data = _run(folder / "tiny", out)
    assert data["units_done"] == data["units_total"] == 6
    return out


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_one_run(folder, reference, tmp_path):
    out = tmp_path / "killed.sqlite"
    rng = random.Random(8)
    kills = 0
    for attempt in range(4):
        before = max(_finished_units(out), 0)
        proc = subprocess.Popen(_cmd(folder / "tiny", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=_env())
        try:
            if attempt == 0:
                time.sleep(rng.uniform(0.5, 4.0))  # anywhere in start-up: imports, loading, creating the file
            else:
                target = before + rng.randint(0, 1)  # mid-run: after some more units, plus a random part of one
                while proc.poll() is None and _finished_units(out) < target:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.5))
            seen = _finished_units(out)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        after = _finished_units(out)
        assert after >= seen  # a committed unit is never lost; at most the unit in flight is
        if out.exists() and after > 0:
            conn = sqlite3.connect(out)  # read-write: rolls back a half-written unit's journal
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
    assert kills >= 3
    done = _run(folder / "tiny", out)
    assert done["units_done"] == 6
    assert tables(out) == tables(reference)
    assert Profile.load(out).digest == Profile.load(reference).digest


@pytest.mark.slow
def test_shards_in_separate_processes_merge_to_one_run(folder, reference, tmp_path, capsys):
    procs = [subprocess.Popen(_cmd(folder / "tiny", tmp_path / f"shard{i}.sqlite", "--shard", f"{i}/2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    shards = [str(tmp_path / f"shard{i}.sqlite") for i in range(2)]
    assert tables(shards[0])["units"] == [0, 2, 4] and tables(shards[1])["units"] == [1, 3, 5]
    code = main(["profile", "merge", *shards, "--out", str(tmp_path / "merged.sqlite"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["units_done"] == data["units_total"] == 6
    assert tables(tmp_path / "merged.sqlite") == tables(reference)
    merged, ref = Profile.load(tmp_path / "merged.sqlite"), Profile.load(reference)
    assert merged.digest == ref.digest
    np.testing.assert_array_equal(merged.stats, ref.stats)
    np.testing.assert_array_equal(merged.block_stats, ref.block_stats)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


# ---------------------------------------------------------------- merge refusals (in-process, tiny pipelines)

def _pipe(kind="dit", seed=0):
    kw = {"transformer": tiny_dit(seed)} if kind == "dit" else {"unet": tiny_unet(seed)}
    pipe = DigitsPipeline(scheduler=_scheduler(), **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _shard(path, pipe=None, shard=(0, 2), **options):
    config = {"steps": 2, "seeds": (0, 1), "labels": (3,), **options}
    return profile(pipe or _pipe(), out=path, shard=shard, progress=False, **config)


@pytest.fixture
def shard0(tmp_path):
    _shard(tmp_path / "a.sqlite")
    return tmp_path / "a.sqlite"


@pytest.mark.parametrize("other,needle", [
    (lambda p: _shard(p, shard=(1, 2), steps=3), "configuration (differs in: steps)"),
    (lambda p: _shard(p, shard=(1, 2), labels=(4,)), "configuration (differs in: labels)"),
    (lambda p: _shard(p, _pipe("unet"), shard=(1, 2)), "another model"),
    (lambda p: _shard(p, _pipe("dit", seed=1), shard=(1, 2)), "another model weights"),
])
def test_merge_refuses_shards_of_another_run(tmp_path, capsys, shard0, other, needle):
    other(tmp_path / "b.sqlite")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["profile", "merge", str(shard0), str(tmp_path / "b.sqlite"), "--out", str(tmp_path / "m.sqlite")])
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and needle in err and "merge only shards" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_merge_checks_overlaps_and_paths(tmp_path, capsys, shard0):
    # the same unit twice with the same numbers is fine (e.g. a shard passed twice)
    again = merge_profiles([shard0, shard0], tmp_path / "m.sqlite")
    assert again.units == (0,) and again.digest == Profile.load(shard0).digest
    # the same unit with other numbers is refused
    conn = sqlite3.connect(tmp_path / "m.sqlite")
    with conn:
        conn.execute("UPDATE local SET err2 = err2 * 2 WHERE layer = 0")
    conn.close()
    for argv, code, needle in [
        ([str(shard0), str(tmp_path / "m.sqlite"), "--out", str(tmp_path / "m2.sqlite")], 1, "different measurements"),
        ([str(shard0), "--out", str(shard0)], 2, "also an input"),
        ([str(shard0), str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "m3.sqlite")], 1, "does not exist"),
        ([str(shard0), "--out", str(tmp_path / "blocker" / "m.sqlite")], 1, "cannot write"),
        (["--out", str(tmp_path / "m4.sqlite")], 2, "FILE"),
    ]:
        (tmp_path / "blocker").write_text("a file, not a folder")
        code_got = main(["profile", "merge", *argv])
        _, err = capsys.readouterr()
        assert code_got == code and needle in err and err.count("\n") == 1, err
        assert not (tmp_path / "m2.sqlite").exists() and not (tmp_path / "m3.sqlite").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_refuses_changed_weights(tmp_path):
    path = tmp_path / "p.sqlite"
    _shard(path, shard=(0, 2))
    with pytest.raises(Exception, match="other weights") as e:
        _shard(path, _pipe("dit", seed=1), shard=(1, 2))
    assert "\n" not in str(e.value)
    assert Profile.load(path).units == (0,)  # the file is unchanged
