"""A plan cannot be misapplied: twice, to changed weights, or half-way. The model ends untouched or restored."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest
import torch
import yaml
from conftest import _scheduler, tiny_dit

import mpsearch
from mpsearch.apps.cli import main
from mpsearch.apps.pipeline import DigitsPipeline
from mpsearch.apps.profile import profile
from mpsearch.errors import PlanError
from mpsearch.models import describe, get_denoiser, weights_digest
from mpsearch.plan import Plan
from mpsearch.runtime import executor
from mpsearch.runtime import install as install_mod
from mpsearch.runtime.executor import apply_plan


def _snapshot(pipe):
    den = get_denoiser(pipe)
    return ({k: v.detach().clone() for k, v in den.state_dict().items()},
            {n: type(m) for n, m in den.named_modules()})


def _assert_same(pipe, snap):
    state, types = snap
    den = get_denoiser(pipe)
    now = den.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert now[k].dtype == v.dtype and now[k].shape == v.shape and torch.equal(now[k], v), k
    assert {n: type(m) for n, m in den.named_modules()} == types
    assert getattr(den, "_mpsearch_plan_handle", None) is None


def _stash_files():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "mpsearch-stash-*"))
               + glob.glob(os.path.join(executor.stash_dir(), "mpsearch-stash-*")))


@pytest.fixture
def planned(dit_pipe, tmp_path):
    """A pipeline and a plan solved from its profile (so the plan records its weights)."""
    prof = profile(dit_pipe, out=tmp_path / "p.sqlite", steps=1, seeds=(0,), labels=(1,), progress=False)
    plan = mpsearch.solve(prof, "50%", role_pins={})
    return dit_pipe, plan, prof


def test_plan_records_the_profiled_weights(planned, tmp_path):
    pipe, plan, prof = planned
    assert plan.weights == prof.weights == weights_digest(pipe)
    again = Plan.load(plan.save(tmp_path / "plan.yaml"))
    assert again.weights == plan.weights and again.to_dict() == plan.to_dict()


def test_changed_weights_are_refused_unless_asked(planned):
    pipe, plan, _ = planned
    with torch.no_grad():
        get_denoiser(pipe).transformer_blocks[1].ff.net[2].weight.mul_(1.01)  # "fine-tuned" after profiling
    snap = _snapshot(pipe)
    with pytest.raises(PlanError, match="weights") as e:
        apply_plan(pipe, plan)
    assert "\n" not in str(e.value) and "ignore_weights=True" in str(e.value)
    _assert_same(pipe, snap)
    handle = apply_plan(pipe, plan, ignore_weights=True)  # the explicit override
    handle.remove()
    _assert_same(pipe, snap)
    with pytest.raises(TypeError, match="check_weights"):  # the deprecated spelling is gone: ignore_weights=True
        apply_plan(pipe, plan, check_weights=False)
    _assert_same(pipe, snap)


def test_a_plan_without_a_weights_digest_still_loads_and_applies(planned, tmp_path):
    pipe, plan, _ = planned
    data = yaml.safe_load(plan.save(tmp_path / "old.yaml").read_text())  # with its calibration file beside it
    del data["model"]["weights"]  # a schema-1 plan written before the digest existed
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    old = Plan.load(tmp_path / "old.yaml")
    assert old.weights is None
    snap = _snapshot(pipe)
    apply_plan(pipe, old).remove()
    _assert_same(pipe, snap)


def test_cli_generate_refuses_a_plan_for_other_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit(0)).save_pretrained("m")
    prof = profile(mpsearch.load_pipeline("m"), out="p.sqlite", steps=1, seeds=(0,), labels=(1,), progress=False)
    mpsearch.solve(prof, "50%", role_pins={}).save("plan.yaml")
    DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit(1)).save_pretrained("m")  # same layers, new weights
    argv = ["generate", "--model", "m", "--plan", "plan.yaml", "--steps", "1", "--labels", "0", "--out", "imgs"]
    capsys.readouterr()  # the set-up's own output
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "weights" in err and "--ignore-weights" in err and err.count("\n") == 1
    assert not (tmp_path / "imgs").exists()
    assert main(argv + ["--ignore-weights", "--json"]) == 0
    capsys.readouterr()


def test_applying_twice_is_refused_and_leaves_the_first_in_place(planned):
    pipe, plan, _ = planned
    snap = _snapshot(pipe)
    handle = apply_plan(pipe, plan)
    den = get_denoiser(pipe)
    after_first = {n: type(m) for n, m in den.named_modules()}
    with pytest.raises(PlanError, match="already applied"):
        apply_plan(pipe, plan)
    with pytest.raises(PlanError, match="already applied"):
        apply_plan(pipe, Plan.uniform(describe(pipe), "int8"))
    assert {n: type(m) for n, m in den.named_modules()} == after_first
    handle.remove()
    handle.remove()  # twice is harmless
    _assert_same(pipe, snap)


class Boom(RuntimeError):
    pass


def _fail_on_call(n, exc=Boom):
    calls = {"n": 0}

    def maybe_fail():
        calls["n"] += 1
        if calls["n"] == n:
            raise exc("injected failure")
    return maybe_fail


@pytest.mark.parametrize("where", ["quantize-3rd-layer", "stash", "swap-3rd-module", "swap-interrupted",
                                   "handle", "after-swaps"])
def test_a_failure_in_the_middle_of_apply_leaves_the_model_untouched(planned, monkeypatch, where):
    pipe, plan, _ = planned
    snap = _snapshot(pipe)
    stash_before = _stash_files()
    exc = KeyboardInterrupt if where == "swap-interrupted" else Boom
    if where == "quantize-3rd-layer":
        fail, real = _fail_on_call(3), install_mod.quantized_module
        monkeypatch.setattr(install_mod, "quantized_module", lambda *a, **k: (fail(), real(*a, **k))[1])
    elif where == "stash":
        real_put = executor._Stash.put

        def put(self, tensors):
            real_put(self, tensors)  # the stash file exists, then the disk "fills up"
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(executor._Stash, "put", put)
        exc = OSError
    elif where in ("swap-3rd-module", "swap-interrupted"):
        fail = _fail_on_call(3, exc)

        def setattr_(obj, name, value):
            if isinstance(value, torch.nn.Module):
                fail()
            return setattr(obj, name, value)
        monkeypatch.setattr(install_mod, "setattr", setattr_, raising=False)
    elif where == "handle":
        def init(self, *a, **k):
            raise Boom("injected failure")
        monkeypatch.setattr(executor.PlanHandle, "__init__", init)
    elif where == "after-swaps":
        real_empty = torch.empty
        fail = _fail_on_call(4)
        # the executor frees each swapped weight with torch.empty(0, ...); the formats' own buffers are not counted
        monkeypatch.setattr(executor.torch, "empty",
                            lambda *a, **k: ((fail() if a[:1] == (0,) else None), real_empty(*a, **k))[1])
    with pytest.raises(exc):
        apply_plan(pipe, plan)
    monkeypatch.undo()
    _assert_same(pipe, snap)
    assert _stash_files() == stash_before
    # and the model still takes the plan afterwards
    apply_plan(pipe, plan).remove()
    _assert_same(pipe, snap)
