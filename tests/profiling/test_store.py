"""The profile file's owner (mpsearch.profiling.store): schema 2 and the migration of version 1, one writer per
file (a second writer, a killed one, concurrent creation), readers during a write, partial profiles, file modes.

The profiles here are synthetic (a two-layer ModelInfo written through ProfileWriter), so the writers can run in
subprocesses that start in a fraction of a second."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mpsearch.errors import ProfileError
from mpsearch.models import LayerInfo, ModelInfo, Role
from mpsearch.profiling.store import (
    SCHEMA,
    Profile,
    ProfileBusyError,
    ProfileWriter,
    lock_path,
    merge_profiles,
    migrate,
    resumable_units,
    writer_lock,
)
from mpsearch.profiling.store import files as store_files

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def info(layers: int = 2) -> ModelInfo:
    return ModelInfo("Synthetic", tuple(LayerInfo(f"l{i}", "linear", (8, 8), "float32", Role.FFN, ("fp", "int8"))
                                        for i in range(layers)), 0, (), ("b0",))


CONFIG = {"steps": 2, "formats": ["int8"], "seeds": [0, 1, 2, 3], "labels": [0]}


def writer(path, layers: int = 2, shard=(0, 1)) -> ProfileWriter:
    return ProfileWriter(path, info(layers), CONFIG, {"mpsearch": "test"}, weights="w:1", shard=shard)


def write(w: ProfileWriter, unit: int, layers: int = 2) -> None:
    rng = np.random.default_rng(unit)
    local = [(li, 1, s, *map(float, rng.uniform(0.1, 1, 4))) for li in range(layers) for s in range(2)]
    sens = [(li, s, float(rng.uniform(0.1, 1)), 64.0) for li in range(layers) for s in range(2)]
    w.write_unit(unit, 0.01, local, [(0, 1, 0.5, 1.0)], sens)


def made(path, units=(0, 1, 2, 3), shard=(0, 1)) -> Path:
    w = writer(path, shard=shard)
    for u in units:
        write(w, u)
    w.close()
    return Path(path)


# a writer in another process: opens `path`, writes the units given, says "ready", then waits for a line on
# stdin before writing unit 3 and closing
_HOLD = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}, {str(HERE)!r}]
from test_store import writer, write
w = writer(sys.argv[1])
for u in map(int, sys.argv[2:]):
    write(w, u)
print("ready", flush=True)
sys.stdin.readline()
write(w, 3)
w.close()
"""


def hold(path, *units) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), *map(str, units)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def schema_of(path) -> int:
    with sqlite3.connect(path) as conn:
        return json.loads(conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])


def tables_of(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def as_version_1(path) -> Path:
    """What mpsearch before schema 2 wrote: the optional tables absent, meta saying schema 1."""
    with sqlite3.connect(path) as conn:
        for table in ("shards", "latency", "e2e_runs", "e2e_units", "e2e", "calibration"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    return Path(path)


# -- schema ------------------------------------------------------------------------------------------------------

def test_a_new_file_has_every_table_and_the_current_schema(tmp_path):
    path = made(tmp_path / "p.sqlite")
    assert SCHEMA == 3 and schema_of(path) == 3
    assert tables_of(path) == {"meta", "units", "shards", "local", "block_change", "sensitivity", "latency",
                               "e2e_runs", "e2e_units", "e2e", "calibration"}


def test_a_version_1_file_is_read_unchanged_and_migrated_by_a_writer(tmp_path):
    path = made(tmp_path / "p.sqlite")
    digest = Profile.load(path).digest
    as_version_1(path)
    before = path.read_bytes()
    p = Profile.load(path)  # read-only: migrated in memory
    assert p.digest == digest and p.units == (0, 1, 2, 3) and p.latency() is None and p.sensitivity is not None
    assert resumable_units(path, info(), CONFIG, "w:1") == {0, 1, 2, 3}  # checking a resume writes nothing
    assert path.read_bytes() == before
    w = writer(path)  # a writer migrates it in place
    w.close()
    assert schema_of(path) == SCHEMA and "e2e_runs" in tables_of(path) and Profile.load(path).digest == digest


def test_migrate_creates_the_missing_tables(tmp_path):
    path = as_version_1(made(tmp_path / "p.sqlite"))
    conn = sqlite3.connect(path)
    migrate(conn)
    conn.close()
    assert schema_of(path) == SCHEMA and {"shards", "latency", "e2e"} <= tables_of(path)


def test_a_version_1_shard_merges_with_a_version_2_one(tmp_path):
    whole = made(tmp_path / "whole.sqlite")
    a = as_version_1(made(tmp_path / "a.sqlite", units=(0, 2), shard=(0, 2)))
    b = made(tmp_path / "b.sqlite", units=(1, 3), shard=(1, 2))
    merged = merge_profiles([a, b], tmp_path / "m.sqlite")
    assert merged.digest == Profile.load(whole).digest and schema_of(tmp_path / "m.sqlite") == SCHEMA
    assert schema_of(a) == 1  # the input is left as it was


def test_another_schema_version_is_refused_naming_its_writer(tmp_path):
    path = made(tmp_path / "p.sqlite")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    for attempt in (lambda: Profile.load(path), lambda: writer(path)):
        with pytest.raises(ProfileError, match=r"schema 4 \(written by mpsearch test\).*profile again"):
            attempt()
    assert schema_of(path) == 4


# -- one writer per file -----------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "p.sqlite"
    proc = hold(path, 0)
    try:
        with pytest.raises(ProfileBusyError, match=rf"pid {proc.pid} on {socket.gethostname()}.*--shard"):
            writer(path)
        assert path.is_file()  # the refused writer's cleanup leaves the other's file alone
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0  # and the first writer goes on writing
    finally:
        proc.kill()
    assert Profile.load(path).units == (0, 3) and not lock_path(path).exists()
    writer(path).close()  # free again


def test_a_killed_writers_lock_is_taken_over(tmp_path):
    path = tmp_path / "p.sqlite"
    proc = hold(path, 0, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads(lock_path(path).read_text())["pid"] == proc.pid  # left behind by the dead writer
    w = writer(path)
    assert w.done_units() == {0, 1} and json.loads(lock_path(path).read_text())["pid"] == os.getpid()
    w.close()


def test_without_flock_a_dead_pid_on_this_host_is_taken_over_a_live_one_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr(store_files, "fcntl", None)
    path = made(tmp_path / "p.sqlite")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(path).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    writer(path).close()
    lock_path(path).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(ProfileBusyError, match=f"pid {os.getppid()}"):
        writer(path)
    lock_path(path).write_text(json.dumps({"pid": dead.pid, "host": "another-host"}))
    with pytest.raises(ProfileBusyError, match="another-host"):  # a pid on another machine cannot be checked
        writer(path)


def test_writers_racing_to_create_one_file_get_one_owner(tmp_path):
    """Writers starting together on a new file: one creates it, the others are refused (no IntegrityError on
    meta, no half-made file)."""
    path = tmp_path / "p.sqlite"
    n = 6
    barrier, outcomes = threading.Barrier(n), []

    def start():
        barrier.wait()
        try:
            w = writer(path)
        except Exception as e:  # noqa: BLE001 - what each writer got is the result
            outcomes.append(e)
            return
        write(w, 0)
        w.close()
        outcomes.append("owner")

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("owner") == 1, outcomes
    assert all(isinstance(o, ProfileBusyError) for o in outcomes if o != "owner"), outcomes
    assert Profile.load(path).units == (0,)


def test_a_reader_during_a_write_sees_finished_units_or_a_clear_error(tmp_path):
    path = tmp_path / "p.sqlite"
    code = (f"import sys\nsys.path[:0] = [{str(ROOT)!r}, {str(HERE)!r}]\nfrom test_store import writer, write\n"
            "w = writer(sys.argv[1], layers=400)\nprint('ready', flush=True)\n"
            "for rounds in range(10):\n    for u in range(4):\n        write(w, u, layers=400)\nw.close()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    seen = set()
    try:
        while proc.poll() is None:
            try:
                p = Profile.load(path)
            except ProfileError as e:
                assert "no finished unit" in str(e) or "locked" in str(e), e
                continue
            assert set(p.units) <= {0, 1, 2, 3} and np.isfinite(p.metric("rel_mse")[:, 1]).all()
            seen.add(len(p.units))
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0 and seen


def test_a_unit_that_cannot_be_committed_is_a_profile_error(tmp_path):
    """A reader holding the file past the writer's patience (or a full disk) fails the unit with one clear line;
    the finished units stay."""
    path = tmp_path / "p.sqlite"
    w = writer(path)
    write(w, 0)
    w.conn.execute("PRAGMA busy_timeout = 50")
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM local").fetchone()  # a read transaction in progress
    try:
        with pytest.raises(ProfileError, match="cannot record unit 1 .*run the same command again to resume"):
            write(w, 1)
    finally:
        reader.close()
    w.close()
    assert Profile.load(path).units == (0,)


def test_merge_never_replaces_a_file_being_written(tmp_path):
    a = made(tmp_path / "a.sqlite", units=(0, 2), shard=(0, 2))
    out = made(tmp_path / "out.sqlite", units=(1,))
    held, done = threading.Event(), threading.Event()

    def other_writer():
        with writer_lock(out):
            held.set()
            done.wait(30)

    t = threading.Thread(target=other_writer)
    t.start()
    held.wait(30)
    before = out.read_bytes()
    try:
        with pytest.raises(ProfileBusyError, match="being written"):
            merge_profiles([a], out)
    finally:
        done.set()
        t.join()
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# -- partial profiles --------------------------------------------------------------------------------------------

def test_a_partial_profile_says_which_units_and_shards_it_lacks(tmp_path):
    shard0 = Profile.load(made(tmp_path / "s0.sqlite", units=(0, 2), shard=(0, 2)))
    assert shard0.expected_units == (0, 1, 2, 3) and shard0.missing_units() == (1, 3)
    assert not shard0.is_complete and shard0.missing_shards() == ((1, 2),)
    with pytest.raises(ProfileError, match=r"2 of 4 units.*missing unit 1 \(seed \d+\), 3 \(seed \d+\).*--shard 1/2"):
        shard0.check_complete()
    resumed = Profile.load(made(tmp_path / "r.sqlite", units=(0, 1)))  # one process, stopped early
    assert resumed.missing_units() == (2, 3) and resumed.missing_shards() == ()
    with pytest.raises(ProfileError, match="run `mpsearch profile` again"):
        resumed.check_complete()
    merged = merge_profiles([shard0.path, made(tmp_path / "s1.sqlite", units=(1, 3), shard=(1, 2))],
                            tmp_path / "m.sqlite")
    assert merged.is_complete and merged.missing_units() == () and merged.shards == ((0, 2), (1, 2))
    merged.check_complete()


# -- file modes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_files_get_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        a = made(tmp_path / "a.sqlite", units=(0, 2), shard=(0, 2))
        b = made(tmp_path / "b.sqlite", units=(1, 3), shard=(1, 2))
        merge_profiles([a, b], tmp_path / "m.sqlite")
    finally:
        os.umask(old)
    for p in (a, b, tmp_path / "m.sqlite"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


@pytest.mark.slow
def test_mpsearch_profile_on_a_file_being_written_is_refused_in_one_line(tmp_path):
    """`mpsearch profile --out X` while another process writes X: exit 1 with one line naming the writer's pid,
    and the other writer's file is left alone (it goes on and finishes)."""
    path = tmp_path / "p.sqlite"
    proc = hold(path, 0)
    try:
        r = subprocess.run([sys.executable, "-m", "mpsearch", "profile", "--model", "default", "--out", str(path),
                            "--labels", "0", "--seeds", "0", "--steps", "2", "--formats", "int8"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        assert r.returncode == 1, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert f"being written by another mpsearch process (pid {proc.pid}" in last and "--shard" in last, r.stderr
        assert "Traceback" not in r.stderr
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert Profile.load(path).units == (0, 3)


def _made_from(path, source, units=(0, 1, 2, 3), shard=(0, 1)) -> Path:
    w = ProfileWriter(path, info(), CONFIG, {"mpsearch": "test"}, weights="w:1", shard=shard, source=source)
    for u in units:
        write(w, u)
    w.close()
    return Path(path)


def test_the_model_source_is_recorded_outside_the_digest(tmp_path):
    plain = Profile.load(made(tmp_path / "plain.sqlite"))
    a = Profile.load(_made_from(tmp_path / "a.sqlite", "/machine-a/model"))
    b = Profile.load(_made_from(tmp_path / "b.sqlite", "/machine-b/model"))
    assert (plain.model_source, a.model_source, b.model_source) == (None, "/machine-a/model", "/machine-b/model")
    assert plain.digest == a.digest == b.digest
    assert a.config == plain.config  # not part of the configuration either


def test_a_resumed_profile_records_where_the_model_is_now(tmp_path):
    path = _made_from(tmp_path / "p.sqlite", "/old/model", units=(0, 1))
    _made_from(path, "/new/model", units=(2, 3))  # the folder moved; the run resumed from there
    assert Profile.load(path).model_source == "/new/model"


def test_merging_shards_from_other_folders_keeps_the_first_inputs_model_source(tmp_path):
    whole = made(tmp_path / "whole.sqlite")
    a = _made_from(tmp_path / "a.sqlite", "/host0/model", units=(0, 2), shard=(0, 2))
    b = _made_from(tmp_path / "b.sqlite", "/host1/model", units=(1, 3), shard=(1, 2))
    merged = merge_profiles([a, b], tmp_path / "m.sqlite")
    assert merged.model_source == "/host0/model" and Profile.load(tmp_path / "m.sqlite").model_source == "/host0/model"
    assert merged.digest == Profile.load(whole).digest


def test_a_corrupt_model_source_is_a_profile_error(tmp_path):
    path = _made_from(tmp_path / "p.sqlite", "/a/model")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'model_source'", (json.dumps(3),))
    conn.close()
    with pytest.raises(ProfileError, match="corrupt model_source"):
        Profile.load(path)


def as_version_2(path) -> Path:
    """What mpsearch before the calibrated variants wrote: no calibration table, meta saying schema 2."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE calibration")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    return Path(path)


def test_a_version_2_file_is_read_and_upgraded_without_losing_anything(tmp_path):
    path = made(tmp_path / "p.sqlite")
    digest = Profile.load(path).digest
    as_version_2(path)
    assert schema_of(path) == 2
    loaded = Profile.load(path)  # read-only: an in-memory upgrade, the file unchanged
    assert loaded.digest == digest and loaded.calibration() == {} and schema_of(path) == 2
    writer(path).close()  # a writer upgrades in place
    assert schema_of(path) == SCHEMA and "calibration" in tables_of(path)
