"""Cache units, hooks and the plan cache section on tiny pipelines."""

import numpy as np
import pytest
import torch

from mpsearch.allocation.joint import schedule_cache
from mpsearch.cache_units import cache_units, compute_shares, get_unit
from mpsearch.errors import PlanError
from mpsearch.models import get_denoiser
from mpsearch.plan import Plan
from mpsearch.profiling.cache_costs import measure_costs
from mpsearch.runtime.cache_hooks import HOOK_STEP, FeatureCacheConfig, apply_feature_cache
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate

STEPS = 4


def _snapshot(module):
    return ({k: v.clone() for k, v in module.state_dict().items()},
            {n: (type(m), sorted(vars(m))) for n, m in module.named_modules()})


def _same(module, snap):
    state, layout = snap
    now = module.state_dict()
    return (set(now) == set(state) and all(torch.equal(now[k], v) for k, v in state.items())
            and {n: (type(m), sorted(vars(m))) for n, m in module.named_modules()} == layout)


def _no_hooks(module):
    return not any(hasattr(m, "_diffusers_hook") or "forward" in vars(m) for m in module.modules())


def test_units_by_architecture(dit_pipe, unet_pipe):
    unet = cache_units(get_denoiser(unet_pipe))
    assert [u.name for u in unet] == ["deep@down_blocks.0"]
    assert unet[0].modules == ("down_blocks.1", "mid_block", "up_blocks.0")
    dit = cache_units(get_denoiser(dit_pipe))
    assert [(u.name, u.modules) for u in dit] == [("residual@transformer_blocks.1-1", ("transformer_blocks.1",))]
    for pipe in (dit_pipe, unet_pipe):
        shares = compute_shares(get_denoiser(pipe))
        assert all(0 < s < 1 for s in shares.values())
    with pytest.raises(Exception, match="no cache unit 'nope'"):
        get_unit(get_denoiser(dit_pipe), "nope")


def test_all_steps_computed_equals_uncached_and_remove_restores(any_pipe):
    guidance = 3.0  # one CFG batch of 2N
    den = get_denoiser(any_pipe)
    snap = _snapshot(den)
    ref = generate(any_pipe, [1], seed=0, steps=STEPS, guidance_scale=guidance)
    handle = apply_feature_cache(den, FeatureCacheConfig(get_unit(den), (True,) * STEPS))
    assert HOOK_STEP in den._diffusers_hook.hooks
    out = generate(any_pipe, [1], seed=0, steps=STEPS, guidance_scale=guidance)
    assert np.array_equal(out, ref)
    assert handle.state.stats["computed"] == STEPS and handle.state.stats["reused"] == 0
    handle.remove()
    handle.remove()  # idempotent
    assert _same(den, snap) and _no_hooks(den)
    assert np.array_equal(generate(any_pipe, [1], seed=0, steps=STEPS, guidance_scale=guidance), ref)


@pytest.mark.parametrize("guidance", [None, 3.0])
def test_reuse_changes_output_and_state_resets_per_call(dit_pipe, unet_pipe, guidance):
    any_pipe = dit_pipe if guidance is None else unet_pipe
    den = get_denoiser(any_pipe)
    compute = (True, False, False, True)
    handle = apply_feature_cache(den, FeatureCacheConfig(get_unit(den), compute))
    ref = None
    try:
        a = generate(any_pipe, [1], seed=0, steps=STEPS, guidance_scale=guidance)
        b = generate(any_pipe, [1], seed=0, steps=STEPS, guidance_scale=guidance)  # new call: fresh cache
        stats = dict(handle.state.stats)
    finally:
        handle.remove()
    ref = generate(any_pipe, [1], seed=0, steps=STEPS, guidance_scale=guidance)
    assert np.array_equal(a, b) and np.isfinite(a).all()
    assert not np.array_equal(a, ref)  # the cache really skipped work
    assert stats == {"computed": 4, "reused": 4, "fallback": 0, "generations": 2}


def test_reused_features_are_the_cached_ones(unet_pipe):
    """On a reuse step the deep path is not run at all: its modules return their last computed outputs, which
    on the computed steps are the uncached model's own."""
    den = get_denoiser(unet_pipe)
    unit = get_unit(den)

    def run(cached: bool):
        features, inner = [], []
        hs = [den.get_submodule(unit.feature).register_forward_hook(lambda m, a, out: features.append(out.clone())),
              den.get_submodule("mid_block.resnets.0").register_forward_hook(lambda *a: inner.append(1))]
        handle = apply_feature_cache(den, FeatureCacheConfig(unit, (True, False, False, True))) if cached else None
        try:
            generate(unet_pipe, [1], seed=0, steps=STEPS)
        finally:
            if handle is not None:
                handle.remove()
            for h in hs:
                h.remove()
        return features, len(inner)

    plain, plain_calls = run(cached=False)
    cached, cached_calls = run(cached=True)
    assert len(plain) == len(cached) == plain_calls == STEPS  # one denoiser call per step here
    assert cached_calls == 2  # the deep path ran on the two computed steps only
    assert torch.equal(cached[0], plain[0])  # computed: what the uncached model gives
    assert torch.equal(cached[1], cached[0]) and torch.equal(cached[2], cached[0])  # reused: the step-0 features
    assert not torch.equal(plain[1], plain[0])  # which the uncached model would not have given
    assert not torch.equal(cached[3], cached[0])  # computed again at step 3


def test_unbatched_cfg_calls_get_their_own_slots(dit_pipe):
    """A pipeline that calls the denoiser twice per step (uncond, cond) reuses each call's own features."""
    den = get_denoiser(dit_pipe)
    unit = get_unit(den)
    x = torch.randn(2, 1, 16, 16)
    labels = [torch.tensor([10, 10]), torch.tensor([1, 2])]

    def run(compute):
        handle = apply_feature_cache(den, FeatureCacheConfig(unit, compute))
        outs = []
        try:
            with torch.no_grad():
                for t in (900, 800, 700):
                    outs.append([den(x, torch.tensor([t, t]), class_labels=lab).sample for lab in labels])
        finally:
            handle.remove()
        return outs

    full = run((True, True, True))
    cached = run((True, False, True))
    assert torch.equal(cached[0][0], full[0][0]) and torch.equal(cached[2][1], full[2][1])
    # reuse at step 1: each call reuses its own step-0 residual, so the two calls still differ
    assert not torch.equal(cached[1][0], cached[1][1])


def test_plan_with_cache_section(any_pipe, tmp_path):
    den = get_denoiser(any_pipe)
    snap = _snapshot(den)
    ref = generate(any_pipe, [3], seed=1, steps=STEPS)
    plan = Plan.uniform(any_pipe, "int4")  # weight-only: the fastest quantized model on CPU
    section, sched, cost = schedule_cache(any_pipe, steps=STEPS, full_computations=3, method="dp", plan=plan,
                                          warmup=1, labels=(1,))
    assert section["costs"] == "measured-quantized" and sum(section["compute"]) == 3
    assert cost.shape == (STEPS, STEPS) and (cost[np.triu_indices(STEPS, 1)] >= 0).all()
    plan.cache = section
    plan.save(tmp_path / "p.yaml")
    loaded = Plan.load(tmp_path / "p.yaml")
    assert loaded.cache == section
    handle = apply_plan(any_pipe, loaded)
    try:
        out = generate(any_pipe, [3], seed=1, steps=STEPS)
        assert handle.cache.state.stats["reused"] == STEPS - 3
    finally:
        handle.remove()
    assert _same(den, snap) and _no_hooks(den)
    assert np.array_equal(generate(any_pipe, [3], seed=1, steps=STEPS), ref)
    assert out.shape == ref.shape and not np.array_equal(out, ref)


def test_cache_only_plan_with_all_steps_equals_fp(dit_pipe):
    plan = Plan.uniform(dit_pipe, "fp")
    unit = get_unit(get_denoiser(dit_pipe))
    plan.cache = {"method": "uniform", "unit": unit.to_dict(), "compute": [True] * 4}
    ref = generate(dit_pipe, [0, 5], seed=2, steps=4)
    handle = apply_plan(dit_pipe, Plan.from_dict(plan.to_dict()))
    out = generate(dit_pipe, [0, 5], seed=2, steps=4)
    handle.remove()
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(method="magic"), "method"),
    (lambda c: c.update(compute=[True, False]), "last step"),
    (lambda c: c.update(compute=[False, True]), "warm-up"),
    (lambda c: c.update(compute=[True, 1, True]), "booleans"),
    (lambda c: c.update(max_reuse=1, compute=[True, False, False, True]), "max_reuse"),
    (lambda c: c.update(extra=1), "unknown key 'extra'"),
    (lambda c: c.pop("unit"), "lacks the key 'unit'"),
    (lambda c: c["unit"].update(kind="frozen"), "kind 'frozen'"),
])
def test_bad_cache_sections_are_refused(dit_pipe, edit, match):
    data = Plan.uniform(dit_pipe, "int8").to_dict()
    cache = {"method": "dp", "unit": get_unit(get_denoiser(dit_pipe)).to_dict(), "compute": [True, False, True]}
    edit(cache)
    data["cache"] = cache
    with pytest.raises(PlanError, match=match):
        Plan.from_dict(data)


def test_cache_unit_missing_from_model_is_refused_before_any_change(dit_pipe):
    den = get_denoiser(dit_pipe)
    snap = _snapshot(den)
    data = Plan.uniform(dit_pipe, "int8").to_dict()
    data["cache"] = {"method": "dp", "compute": [True, True],
                     "unit": {"name": "x", "kind": "transformer-residual", "modules": ["transformer_blocks.7"]}}
    with pytest.raises(PlanError, match="transformer_blocks.7"):
        apply_plan(dit_pipe, Plan.from_dict(data))
    assert _same(den, snap) and _no_hooks(den)


def test_measured_costs_grow_with_distance(unet_pipe):
    den = get_denoiser(unet_pipe)
    cost = measure_costs(unet_pipe, get_unit(den), 4, labels=(1,), target="output")
    assert np.allclose(np.tril(cost), 0) and (cost[np.triu_indices(4, 1)] > 0).all()
    assert cost[0, 3] > cost[2, 3]  # the feature changes more over four steps than over one
