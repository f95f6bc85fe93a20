"""One install path: apply_plan and the checkpoint loader both put a plan on a denoiser through
``runtime.install.install``, which installs all of it (modules, step state, cache hooks) or nothing."""

from __future__ import annotations

import pytest
from conftest import tiny_dit

from mpsearch.cache_units import get_unit
from mpsearch.errors import PlanError
from mpsearch.formats import get_format
from mpsearch.plan import Plan
from mpsearch.runtime import checkpoint, executor
from mpsearch.runtime import install as install_mod
from mpsearch.runtime.install import install
from mpsearch.runtime.steps import current_step_state


def _plan(model, cache=True):
    plan = Plan.uniform(model, "int8")
    name = next(n for n, f in plan.layers.items() if f == "int8")
    data = plan.to_dict() | {"overrides": [{"steps": [0, 2], "activations": {name: "fp"}}]}
    if cache:
        data["cache"] = {"method": "uniform", "unit": get_unit(model).to_dict(), "compute": [True, False, True]}
    return Plan.from_dict(data), name


def _packed(model, plan):
    modules = dict(model.named_modules())
    return {a.name: get_format(a.format).quantize(modules[a.name].weight.detach())
            for a in plan.assignments if a.format != "fp"}


def test_install_puts_modules_step_state_and_cache_on_and_uninstall_takes_them_off():
    model = tiny_dit()
    plan, name = _plan(model)
    originals = dict(model.named_modules())
    done = install(model, plan, _packed(model, plan))
    qmod = model.get_submodule(name)
    assert qmod is not originals[name] and qmod.act_windows == [(0, 2, False)]
    assert qmod.step_state is done.step_state is current_step_state(model)
    assert done.cache is not None and hasattr(model, "_diffusers_hook")
    done.uninstall()
    assert dict(model.named_modules()) == originals
    assert current_step_state(model) is None and not hasattr(model, "_diffusers_hook")
    done.uninstall()  # safe twice


def test_install_is_all_or_nothing(monkeypatch):
    model = tiny_dit()
    plan, _ = _plan(model)
    originals = dict(model.named_modules())

    def boom(*a, **k):
        raise RuntimeError("injected")
    monkeypatch.setattr(install_mod, "apply_feature_cache", boom)  # the last step fails
    with pytest.raises(RuntimeError, match="injected"):
        install(model, plan, _packed(model, plan))
    assert dict(model.named_modules()) == originals
    assert current_step_state(model) is None and not hasattr(model, "_diffusers_hook")
    with pytest.raises(PlanError, match="packed weights for 0 layer"):
        install(model, plan, {})


def test_apply_plan_and_load_denoiser_both_use_install(monkeypatch, tmp_path):
    from mpsearch.apps.pipeline import load_pipeline

    calls = []

    def spy(denoiser, plan, packed):
        calls.append(type(denoiser).__name__)
        return install(denoiser, plan, packed)
    monkeypatch.setattr(executor, "install", spy)
    monkeypatch.setattr(checkpoint, "install", spy)
    pipe = load_pipeline("default")
    plan, _ = _plan(pipe.transformer if hasattr(pipe, "transformer") else pipe.unet, cache=False)
    out = checkpoint.export(pipe, plan, tmp_path / "q")  # apply_plan inside
    model, loaded = checkpoint.load_denoiser(out)
    assert len(calls) == 2 and loaded.to_dict() == plan.to_dict()
    assert current_step_state(model) is not None  # windows: the loaded model holds its step state
