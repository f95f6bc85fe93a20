"""The executor's stash of full-precision weights: restored in the original layout, kept in a documented,
configurable folder, named with the owner's pid, and stale files of dead processes removed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_dit

from mpsearch.plan import Plan
from mpsearch.runtime import executor
from mpsearch.runtime.executor import _Stash, apply_plan, stash_dir


@pytest.fixture
def stash_folder(tmp_path, monkeypatch):
    folder = tmp_path / "stash"
    monkeypatch.setenv("MPSEARCH_STASH_DIR", str(folder))
    return folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("make", ["transposed", "strided", "offset"])
def test_a_disk_stash_gives_weights_back_in_their_original_layout(stash_folder, make):
    base = torch.randn(48, 64)
    w = {"transposed": lambda: base.t(), "strided": lambda: base[:, ::2], "offset": lambda: base[3:, 5:]}[make]()
    stash = _Stash("disk")
    stash.put({"w": w})
    back = stash.take()["w"]
    assert back.shape == w.shape and back.dtype == w.dtype and back.device == w.device
    assert back.stride() == w.stride() and back.is_contiguous() == w.is_contiguous()
    assert torch.equal(back, w)
    assert back.data_ptr() % 16 == 0  # fresh memory, not a view of the file's mmap
    assert not list(stash_folder.iterdir())


def test_remove_restores_the_weights_strides_bit_for_bit(stash_folder):
    model = tiny_dit()
    layer = model.transformer_blocks[0].attn1.to_q
    layer.weight = torch.nn.Parameter(torch.randn(layer.in_features, layer.out_features).t())  # strides (1, out)
    ref = layer.weight.detach().clone()
    strides = layer.weight.stride()
    plan = Plan.uniform(model, "int8")
    with apply_plan(model, plan, stash="disk"):
        files = list(stash_folder.iterdir())
        assert len(files) == 1 and files[0].name.startswith(f"mpsearch-stash-{os.getpid()}-")
    w = model.transformer_blocks[0].attn1.to_q.weight
    assert w.stride() == strides and not w.is_contiguous() and torch.equal(w, ref)
    assert not list(stash_folder.iterdir())


def test_the_stash_folder_is_configurable_with_a_per_user_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MPSEARCH_STASH_DIR", str(tmp_path / "s"))
    assert stash_dir() == tmp_path / "s"
    monkeypatch.delenv("MPSEARCH_STASH_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert stash_dir() == tmp_path / "cache" / "mpsearch" / "stash"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert stash_dir() == tmp_path / "home" / ".cache" / "mpsearch" / "stash"


def test_stale_stashes_of_dead_processes_are_removed_by_the_next_stash(stash_folder):
    stash_folder.mkdir(parents=True)
    dead = stash_folder / f"mpsearch-stash-{_dead_pid()}-abc.safetensors"
    live = stash_folder / f"mpsearch-stash-{os.getppid()}-def.safetensors"  # the parent process is alive
    other = stash_folder / "notes.txt"
    for p in (dead, live, other):
        p.write_bytes(b"x" * 10)
    model = tiny_dit()
    with apply_plan(model, Plan.uniform(model, "int8"), stash="disk"):
        assert not dead.exists()
        assert live.exists() and other.exists()
    assert sorted(p.name for p in stash_folder.iterdir()) == sorted([live.name, other.name])


def test_an_unwritable_stash_folder_is_a_one_line_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MPSEARCH_STASH_DIR", str(blocker / "stash"))
    model = tiny_dit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(executor.PlanError, match="MPSEARCH_STASH_DIR") as e:
        apply_plan(model, Plan.uniform(model, "int8"), stash="disk")
    assert "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
