"""The one step state per denoiser, the layer-type registry and PlanHandle as a context manager."""

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.cache_units import cache_units
from mpsearch.formats import get_format
from mpsearch.layer_types import LayerType, register_layer_type, unregister_layer_type
from mpsearch.models import describe, get_denoiser
from mpsearch.plan import Plan
from mpsearch.profiling.sensitivity import CallRecorder
from mpsearch.runtime.cache_hooks import HOOK_STEP, FeatureCacheConfig, apply_feature_cache
from mpsearch.runtime.executor import applied_plan, apply_plan
from mpsearch.runtime.generation import generate
from mpsearch.runtime.qmodules import _QuantMixin, quantized_module, register_qmodule, unregister_qmodule
from mpsearch.runtime.steps import (
    HOOK_NAME,
    FixedStep,
    acquire_step_state,
    current_step_state,
    first_tensor,
    release_step_state,
)


class Den(nn.Module):
    """A denoiser that notes, inside its forward, the step and slot its step state says."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.seen = []

    def forward(self, x, timestep=None):
        s = current_step_state(self)
        if s is not None:
            self.seen.append((s.step, s.slot))
        return self.lin(x)


def _clean(m):
    return not hasattr(m, "_diffusers_hook") and "forward" not in vars(m)


def test_timesteps_map_to_steps_including_cfg_split_calls():
    den, x = Den(), torch.randn(2, 4)
    state = acquire_step_state(den)
    # one generation of 3 steps, timesteps as a 0-d tensor, a batch tensor, a positional float
    den(x, timestep=torch.tensor(900))
    den(x, timestep=torch.tensor([600, 600]))
    den(x, 300.0)
    # a second generation run as CFG halves: two calls per step with the same timestep
    for t in (900, 900, 600, 600, 300, 300):
        den(x, timestep=torch.tensor([t]))
    den(x)  # a call without a timestep leaves the state where it was
    assert den.seen == [(0, 0), (1, 0), (2, 0), (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (2, 1)]
    assert state.generation == 2
    release_step_state(den)
    assert _clean(den)


def test_removed_by_name_and_by_last_user():
    den, x = Den(), torch.randn(1, 4)
    a = acquire_step_state(den)
    b = acquire_step_state(den)  # a second user shares the one hook and state
    assert a is b and list(den._diffusers_hook.hooks) == [HOOK_NAME]
    release_step_state(den)
    assert list(den._diffusers_hook.hooks) == [HOOK_NAME]  # one user left
    den(x, timestep=5)
    den(x, timestep=4)
    assert a.step == 1
    release_step_state(den)
    assert _clean(den) and current_step_state(den) is None
    # diffusers' own removal by name works too
    state = acquire_step_state(den)
    den._diffusers_hook.remove_hook(HOOK_NAME)
    den(x, timestep=3)
    assert state.step == -1 and current_step_state(den) is None


def test_hooks_installed_earlier_see_the_step_and_hold_freezes():
    den, x = Den(), torch.randn(1, 4)
    acquire_step_state(den)
    with CallRecorder().install(den) as rec:  # registered after the step hook: the step hook moves outside
        for t in (3, 2, 2, 1):
            den(x, timestep=t)
        with rec.state.hold():
            den(x, timestep=9)  # a re-evaluation: neither a new generation nor a new call
        assert (rec.state.step, rec.state.slot, rec.state.generation) == (2, 0, 1)
    assert [s for s, _, _ in rec.calls] == [0, 1, 1, 2, 2]
    assert list(den._diffusers_hook.hooks) == [HOOK_NAME]  # the first user still holds it
    release_step_state(den)
    assert _clean(den)


def test_plan_windows_and_feature_cache_share_one_step_hook(dit_pipe):
    den = get_denoiser(dit_pipe)
    info = describe(dit_pipe)
    layer = next(l.name for l in info.layers if "int8" in l.eligible)
    data = Plan.uniform(info, "int8").to_dict()
    data["overrides"] = [{"steps": [0, 2], "activations": {layer: "fp"}}]
    handle = apply_plan(dit_pipe, Plan.from_dict(data))
    cache = apply_feature_cache(den, FeatureCacheConfig(cache_units(den)[0], (True, False, True, True)))
    hooks = list(den._diffusers_hook.hooks)
    assert hooks.count(HOOK_NAME) == 1 and hooks[-1] == HOOK_NAME and HOOK_STEP in hooks
    assert cache.steps is handle.step_state is den.get_submodule(layer).step_state
    generate(dit_pipe, [0], seed=0, steps=4)
    assert cache.state.stats["reused"] == 1 and cache.steps.step == 3
    cache.remove()
    assert list(den._diffusers_hook.hooks) == [HOOK_NAME]
    handle.remove()
    assert _clean(den)


def test_fixed_step_and_first_tensor():
    s = FixedStep(3)
    s.advance(10.0)
    s.reset()
    assert s.step == 3
    t = torch.ones(1)
    assert first_tensor(t) is t and first_tensor((t, 1)) is t and first_tensor(type("O", (), {"sample": t})()) is t
    assert first_tensor(("a",)) is None and first_tensor(None) is None


class Scaled(nn.Module):
    """A toy layer type: y = 0.5 * x W^T (no bias)."""

    def __init__(self, w):
        super().__init__()
        self.weight = nn.Parameter(w)

    def forward(self, x):
        return 0.5 * x @ self.weight.t()


class QuantScaled(_QuantMixin, nn.Module):
    @classmethod
    def from_module(cls, module, packed, act_windows=()):
        q = cls()
        q._init_packed(packed, list(act_windows))
        return q

    def forward(self, x):
        return 0.5 * x @ self.fmt.dequantize(self.packed()).t()


@pytest.fixture
def scaled_type():
    @register_layer_type
    class ScaledType(LayerType):
        kind = "scaled"
        module_type = Scaled

    register_qmodule("scaled")(QuantScaled)
    yield
    unregister_layer_type("scaled")
    unregister_qmodule("scaled")


def test_registered_layer_type_is_eligible_and_quantized(scaled_type):
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(Scaled(w.clone()))
    info = describe(model)
    assert [(l.name, l.kind) for l in info.layers] == [("0", "scaled")]
    assert {"int8", "nvfp4", "int4"} <= set(info.layers[0].eligible)
    x = torch.randn(3, 256)
    ref = model(x)
    with apply_plan(model, Plan.uniform(model, "int8")) as handle:
        assert type(model[0]) is QuantScaled and handle.bytes_after < handle.bytes_before
        y = model(x)
    # int8 by hand: symmetric per output channel, scale = amax / 127, round half to even
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    expect = 0.5 * x @ (torch.round(w / scale).clamp(-127, 127) * scale).t()
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)
    assert type(model[0]) is Scaled and torch.equal(model[0].weight, w) and torch.equal(model(x), ref)


def test_unregistered_layer_type_has_no_quantized_module():
    class Other(nn.Module):
        weight = nn.Parameter(torch.ones(2, 16))

    with pytest.raises(Exception, match="no quantized module for Other"):
        quantized_module(Other(), get_format("int8").quantize(torch.ones(2, 16)))


def test_context_manager_restores_bit_for_bit_also_on_error(dit_pipe):
    den = get_denoiser(dit_pipe)
    state = {k: v.clone() for k, v in den.state_dict().items()}
    types = {n: type(m) for n, m in den.named_modules()}
    ref = generate(dit_pipe, [1], seed=0, steps=3)
    with pytest.raises(RuntimeError, match="inside"):
        with apply_plan(dit_pipe, Plan.uniform(dit_pipe, "nvfp4")) as handle:
            assert applied_plan(dit_pipe) is handle
            raise RuntimeError("inside the block")
    assert handle.removed and applied_plan(dit_pipe) is None
    now = den.state_dict()
    assert set(now) == set(state) and all(torch.equal(now[k], v) for k, v in state.items())
    assert {n: type(m) for n, m in den.named_modules()} == types
    assert np.array_equal(generate(dit_pipe, [1], seed=0, steps=3), ref)
