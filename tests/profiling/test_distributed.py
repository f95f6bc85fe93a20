"""Profiling under torchrun / accelerate launch: one shard per rank, rank 0 merges, the file equals one process's.

The multi-process cases start two real processes with the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT; gloo on the CPU); each runs several `mpsearch profile` commands in turn
(the imports are paid once). Tables are compared exactly with a one-process profile made with the same
number of threads (one, as torchrun sets for each worker), and the digests are equal.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mpsearch
from mpsearch.apps.cli import main
from mpsearch.errors import ProfileError, UsageError
from mpsearch.profiling.distributed import Launch, detect_launch, launch_device, profile_sharded, shard_file
from mpsearch.profiling.profiler import ProfileConfig
from mpsearch.profiling.store import Profile

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--model", "default", "--steps", "2", "--seeds", "0,1", "--labels", "0,1", "--json"]

# runs each step's `mpsearch profile` argv in this process, on the step's port; rank `fail_rank` fails while
# measuring (an injected error); prints one JSON list: exit code, stdout, stderr and the files left in the --out
# folder (rank 0's view, taken before it joins the next step, so no rank has written into it yet) of each step
WORKER = r"""
import contextlib, io, json, os, sqlite3, sys
from mpsearch.apps.cli import main
from mpsearch.errors import ProfileError
import mpsearch.profiling.profiler as profiler

def boom(*args, **kwargs):
    raise ProfileError("injected failure while measuring; fix it and rerun")

results = []
for step in json.loads(sys.argv[1]):
    os.environ["MASTER_PORT"] = str(step["port"])
    real = profiler._run_units
    if step.get("fail_rank") == int(os.environ["RANK"]):
        profiler._run_units = boom
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(step["argv"])
    profiler._run_units = real
    files = {}  # what the step left in its --out folder: each file's finished units and their recorded seconds
    folder = os.path.dirname(step["argv"][step["argv"].index("--out") + 1])
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            conn = sqlite3.connect("file:" + os.path.join(folder, name) + "?mode=ro", uri=True)
            files[name] = sorted(conn.execute("SELECT unit, seconds FROM units"))
            conn.close()
        except sqlite3.Error:
            files[name] = None
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue(), "files": files})
print("RESULTS " + json.dumps(results))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(steps: list[dict], world: int = 2) -> list[list[dict]]:
    """Run ``steps`` on ``world`` processes as torchrun would start them; each rank's results, per step."""
    for step in steps:
        step["port"] = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(steps)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, err[-3000:]
            line = [l for l in out.splitlines() if l.startswith("RESULTS ")]
            assert line, (out[-2000:], err[-3000:])
            results.append(json.loads(line[-1][len("RESULTS "):]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def tables(path) -> dict:
    """Every measurement table's content, sorted; the per-unit wall times and the latency table (a property of
    the machine, added by the last step) are left out."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {"meta": sorted((k, json.loads(v)) for k, v in conn.execute("SELECT key, value FROM meta")
                               if k != "latency"),
                "units": sorted(u for (u,) in conn.execute("SELECT unit FROM units")),
                **{t: sorted(conn.execute(f"SELECT * FROM {t}")) for t in ("local", "block_change", "sensitivity")}}
    finally:
        conn.close()


def _seconds(path) -> dict:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT unit, seconds FROM units"))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process profile, with one thread (as each torchrun worker has)."""
    out = tmp_path_factory.mktemp("one") / "p.sqlite"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = mpsearch.load_pipeline("default")
        mpsearch.profile(pipe, out=out, steps=2, seeds=(0, 1), labels=(0, 1), progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------- two processes


def test_two_processes_equal_one_then_fail_and_resume(reference, tmp_path):
    stale = tmp_path / "c"
    stale.mkdir()
    (stale / "p.sqlite.shard0-of-3").write_bytes(b"")  # left by an unfinished 3-process run
    steps = [
        {"argv": ["profile", *ARGS, "--out", str(tmp_path / "a" / "p.sqlite")]},
        {"argv": ["profile", *ARGS, "--out", str(tmp_path / "b" / "p.sqlite")], "fail_rank": 1},
        {"argv": ["profile", *ARGS, "--out", str(tmp_path / "b" / "p.sqlite")]},  # the same command again
        {"argv": ["profile", *ARGS, "--out", str(stale / "p.sqlite")]},
        {"argv": ["profile", *ARGS, "--out", str(tmp_path / "a" / "p.sqlite"), "--end-to-end", "--shortlist", "1",
                  "--windows", "1", "--latency", "--latency-min-time", "0.001"]},
    ]
    rank0, rank1 = _launch(steps)

    # 1. a fresh run: rank 0 reports once, rank 1 prints nothing; the file equals one process's; no shard left
    fresh = tmp_path / "a" / "p.sqlite"
    assert rank0[0]["code"] == rank1[0]["code"] == 0, (rank0[0]["err"], rank1[0]["err"])
    data = json.loads(rank0[0]["out"])
    assert data["units_done"] == data["units_total"] == 2 and data["processes"] == 2
    assert rank1[0]["out"] == "" and rank1[0]["err"] == ""
    assert data["digest"] == Profile.load(reference).digest == Profile.load(fresh).digest
    assert tables(fresh) == tables(reference)
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["p.sqlite"]

    # 2. rank 1 fails while measuring: both ranks stop with a one-line error, rank 0 naming rank 1; no merged
    # file; rank 0's finished unit stays in its shard file
    failed = tmp_path / "b" / "p.sqlite"
    for _r, res in ((0, rank0[1]), (1, rank1[1])):
        assert res["code"] == 1 and res["out"] == "" and res["err"].count("\n") == 1, res
        assert "injected failure while measuring" in res["err"]
    assert "rank 1 of 2 failed: injected failure" in rank0[1]["err"]
    kept = shard_file(failed, 0, 2).name
    left = rank0[1]["files"]
    assert sorted(left) == [kept] and [u for u, _ in left[kept]] == [0]

    # 3. the same command resumes: rank 0 measures nothing again (its unit keeps its recorded time), and the
    # merged file equals one process's
    assert rank0[2]["code"] == rank1[2]["code"] == 0, (rank0[2]["err"], rank1[2]["err"])
    assert tables(failed) == tables(reference)
    assert _seconds(failed)[0] == left[kept][0][1]
    assert sorted(p.name for p in failed.parent.iterdir()) == ["p.sqlite"]

    # 4. shard files of a run with another number of processes: a one-line error naming the fix, nothing touched
    for res in (rank0[3], rank1[3]):
        assert res["code"] == 1 and res["err"].count("\n") == 1, res
        assert "3-process" in res["err"] and "--nproc-per-node 3" in res["err"] and "delete those files" in res["err"]
    assert sorted(p.name for p in stale.iterdir()) == ["p.sqlite.shard0-of-3"]

    # 5. on the finished profile, --end-to-end and --latency: nothing is measured or merged again; rank 0 runs
    # both into the file and reports them, rank 1 waits and prints nothing
    assert rank0[4]["code"] == rank1[4]["code"] == 0, (rank0[4]["err"], rank1[4]["err"])
    assert rank1[4]["out"] == ""
    data = json.loads(rank0[4]["out"])
    assert data["end_to_end"]["units"] > 0 and data["latency"] is not None
    assert data["digest"] == Profile.load(reference).digest
    assert tables(fresh) == tables(reference) and rank0[4]["files"]["p.sqlite"] == rank0[0]["files"]["p.sqlite"]
    assert Profile.load(fresh).latency() is not None


@pytest.mark.slow
def test_torchrun_equals_one_process(reference, tmp_path):
    out = tmp_path / "p.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(_free_port()), "-m", "mpsearch", "profile", *ARGS, "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    outputs = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(outputs) == 1 and outputs[0]["processes"] == 2  # rank 0 alone reports
    assert tables(out) == tables(reference)
    assert Profile.load(out).digest == Profile.load(reference).digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.sqlite"]


# ---------------------------------------------------------------- in this process: the launch and its refusals


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"WORLD_SIZE": "1", "RANK": "0"}, None),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, Launch(1, 2, 1)),
    ({"WORLD_SIZE": "4", "RANK": "3"}, Launch(3, 4, None)),
])
def test_detect_launch(env, expected):
    assert detect_launch(env) == expected


@pytest.mark.parametrize("env,needle", [
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "outside WORLD_SIZE=2"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "not an integer"),
])
def test_detect_launch_refuses_a_broken_environment(env, needle):
    with pytest.raises(UsageError, match=needle):
        detect_launch(env)


def test_shard_files_and_devices(tmp_path):
    assert shard_file(tmp_path / "p.sqlite", 1, 4) == tmp_path / "p.sqlite.shard1-of-4"
    assert launch_device(Launch(1, 2, 1)).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert launch_device(Launch(1, 2, 1), "cpu") == torch.device("cpu")
    assert launch_device(None) == torch.device("cpu")  # one process: the CPU unless asked
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            launch_device(Launch(0, 2, 0), "cuda")


@pytest.mark.parametrize("extra,needle", [
    (["--shard", "1/2"], "both split the work"),
    (["--estimate"], "run it without torchrun"),
])
def test_cli_refuses_shard_and_estimate_under_a_launch(capsys, monkeypatch, tmp_path, extra, needle):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    code = main(["profile", "--out", str(tmp_path / "p.sqlite"), *extra])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was loaded, joined or written


def test_python_refuses_a_shard_under_a_launch_and_distributed_without_one(monkeypatch, tmp_path, dit_pipe):
    with pytest.raises(UsageError, match="not part of a distributed launch"):
        mpsearch.profile(dit_pipe, out=tmp_path / "p.sqlite", distributed=True, steps=1, seeds=(0,), labels=(1,))
    for k, v in {"WORLD_SIZE": "2", "RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UsageError, match="already splits the work"):
        mpsearch.profile(dit_pipe, out=tmp_path / "p.sqlite", shard=(0, 2), steps=1, seeds=(0,), labels=(1,))
    # distributed=False: this process alone, whatever the environment says
    prof = mpsearch.profile(dit_pipe, out=tmp_path / "p.sqlite", distributed=False, steps=1, seeds=(0,), labels=(1,),
                            progress=False)
    assert prof.units == (0,) and sorted(p.name for p in tmp_path.iterdir()) == ["p.sqlite"]


class _OneRank:
    """Stands for rank ``rank`` of ``world``: the survey and the steps run here alone (no process group)."""

    def __init__(self, rank, world):
        self.rank, self.world_size, self.is_main = rank, world, rank == 0

    def exchange(self, fn, *, what, notify=False):
        return [fn()] * self.world_size

    def on_main(self, fn, *, what):
        return fn()

    def gather_to_main(self, obj, *, what):
        return [obj] * self.world_size if self.is_main else None


def test_a_shard_file_of_another_rank_is_refused(tmp_path, dit_pipe):
    config = ProfileConfig(steps=1, seeds=(0, 1), labels=(1,))
    out = tmp_path / "p.sqlite"
    mpsearch.profile(dit_pipe, config, out=shard_file(out, 1, 2), shard=(0, 2), progress=False,
                     variants="none")  # unit 0, misnamed
    with pytest.raises(ProfileError, match="holds unit 0, which belongs to rank 0 of 2, not to rank 1"):
        profile_sharded(dit_pipe, config, out, _OneRank(1, 2), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.sqlite.shard1-of-2"]  # nothing else touched


def test_a_shard_file_left_by_a_killed_writer_is_resumed(tmp_path, dit_pipe):
    """kill -9 in the middle of a unit leaves a hot journal, which a read-only connection cannot read: the files of
    earlier runs are opened as resuming opens them, so the journal is rolled back and the finished unit is kept."""
    config = ProfileConfig(steps=1, seeds=(0, 1), labels=(1,))
    out = tmp_path / "p.sqlite"
    mine = shard_file(out, 0, 2)
    mpsearch.profile(dit_pipe, config, out=mine, shard=(0, 2), progress=False, variants="none")
    kill = ("import os, sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('PRAGMA "
            "cache_size=1')\nc.execute('BEGIN')\nc.execute('UPDATE local SET err2 = -1')\nc.execute('INSERT INTO units "
            "VALUES (2, 1.0)')\nos._exit(9)\n")
    subprocess.run([sys.executable, "-c", kill, str(mine)], check=False)
    assert Path(f"{mine}-journal").stat().st_size > 0
    merged = profile_sharded(dit_pipe, config, out, _OneRank(0, 2), progress=False)  # rank 0's part of a resume
    assert merged.units == (0,) and sorted(p.name for p in tmp_path.iterdir()) == ["p.sqlite"]
    assert merged.digest == mpsearch.profile(dit_pipe, config, out=tmp_path / "one.sqlite", shard=(0, 2),
                                             progress=False, variants="none").digest
