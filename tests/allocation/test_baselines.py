"""The anchors' allocation methods (mpsearch.allocation.baselines): checked against quantities computed another way."""

import numpy as np
import pytest
import torch
from conftest import Tiny  # a two-layer MLP whose Jacobians are worked out by hand

from mpsearch.allocation.baselines import (
    CONTENT_ROLES,
    choose_split,
    hawq_problem,
    hawq_traces,
    mixdq_measured_plans,
    nominal_bytes,
    output_jacobian_traces,
    record_denoiser_calls,
)
from mpsearch.allocation.objective import build_problem
from mpsearch.apps.profile import profile
from mpsearch.errors import UsageError
from mpsearch.formats import get_format


def _exact_traces(model, x):
    """||J_p||_F^2 for every weight, from the full Jacobian of the output."""
    out = {}
    for name in ("a", "b"):
        w = getattr(model, name).weight

        def f(wv, name=name):
            saved = getattr(model, name).weight
            del getattr(model, name)._parameters["weight"]
            getattr(model, name).weight = wv
            try:
                return model(x)
            finally:
                getattr(model, name)._parameters["weight"] = saved

        J = torch.autograd.functional.jacobian(f, w.detach().clone())
        out[name] = float(J.double().square().sum())
    return out


def test_trace_exact_for_scalar_output():
    # one output element: u = +-1, so ||J^T u||^2 = ||J||^2 for every sample (no estimation error)
    model, x = Tiny(out=1), torch.randn(1, 3, generator=torch.Generator().manual_seed(1))
    est = output_jacobian_traces(model, [((x,), {})], {"a": model.a.weight, "b": model.b.weight}, samples=3)
    exact = _exact_traces(model, x)
    for k in exact:
        assert est[k] == pytest.approx(exact[k], rel=1e-9)


def test_trace_unbiased_for_vector_output():
    model, x = Tiny(out=6), torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    est = output_jacobian_traces(model, [((x,), {})], {"a": model.a.weight, "b": model.b.weight}, samples=400)
    exact = _exact_traces(model, x)
    for k in exact:
        assert est[k] == pytest.approx(exact[k], rel=0.1)
    # the last layer's block is known in closed form: J_b = I (x) h, so Tr = out_dim * ||h||^2
    with torch.no_grad():
        h = torch.tanh(model.a(x))
    assert exact["b"] == pytest.approx(6 * float(h.double().square().sum()), rel=1e-9)


def test_trace_leaves_model_untouched():
    model, x = Tiny(out=2), torch.randn(2, 3)
    model.a.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    output_jacobian_traces(model, [((x,), {})], {"a": model.a.weight, "b": model.b.weight}, samples=2)
    assert model.a.weight.requires_grad is False and model.b.weight.requires_grad is True
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UsageError, match="no recorded calls"):
        output_jacobian_traces(model, [], {"a": model.a.weight})


@pytest.fixture
def small_profile(dit_pipe, tmp_path):
    return profile(dit_pipe, out=tmp_path / "p.sqlite", labels=(0, 1), seeds=(0,), steps=3, progress=False,
                   variants="none")  # the rivals run round-to-nearest


def test_record_calls_every(dit_pipe):
    assert len(record_denoiser_calls(dit_pipe, (0, 1), 0, 6, every=2)) == 3
    assert len(record_denoiser_calls(dit_pipe, (0,), 0, 4)) == 4


def test_nominal_bytes_leave_scales_out(small_profile):
    info, formats = small_profile.info, small_profile.formats
    nom = nominal_bytes(info, formats)
    for li, layer in enumerate(info.layers):
        for fi, f in enumerate(formats):
            if f not in layer.eligible:
                continue
            expected = {"fp": layer.nbytes("fp"), "int8": layer.numel, "nvfp4": layer.numel // 2,
                        "int4": layer.numel // 2}[f]
            assert nom[li, fi] == expected
            assert nom[li, fi] <= layer.nbytes(f)  # the real size includes the scales
            if f != "fp":
                assert nom[li, fi] < layer.nbytes(f)


def test_hawq_problem_is_trace_times_weight_error(dit_pipe, small_profile):
    traces = hawq_traces(dit_pipe, small_profile.info, labels=(0, 1), steps=3, every=1, samples=1)
    assert traces.shape == (len(small_profile.info.layers),) and (traces > 0).all()
    p = hawq_problem(small_profile, dit_pipe, traces, small_profile.info.fp_bytes // 2)
    modules = dict(dit_pipe.transformer.named_modules())
    li, layer = next((i, l) for i, l in enumerate(small_profile.info.layers) if "nvfp4" in l.eligible)
    fi = small_profile.formats.index("nvfp4")
    w = modules[layer.name].weight.detach()
    raw = p.cost.copy()
    delta = float((get_format("nvfp4").fake_quantize(w).double() - w.double()).square().sum())
    # costs are normalized by their largest entry: compare ratios between two entries
    li2 = next(i for i, l in enumerate(small_profile.info.layers) if "nvfp4" in l.eligible and i != li)
    w2 = modules[small_profile.info.layers[li2].name].weight.detach()
    delta2 = float((get_format("nvfp4").fake_quantize(w2).double() - w2.double()).square().sum())
    expected = (traces[li] / layer.numel * delta) / (traces[li2] / small_profile.info.layers[li2].numel * delta2)
    assert raw[li, fi] / raw[li2, fi] == pytest.approx(expected, rel=1e-9)
    assert (p.cost[:, 0] == 0).all()


def mixdq_plans(profile, budget_bytes, splits):
    """MixDQ-style plans with the groups by role: content-role layers' damage is their local cost (no quality
    damage), the other layers' the reverse (the one implementation, ``mixdq_measured_plans``, on these)."""
    cost = build_problem(profile, None, role_pins={}).cost
    content = np.array([l.role.value in CONTENT_ROLES for l in profile.info.layers])[:, None]
    fin = np.where(np.isfinite(cost), cost, 0.0) + 1e-9  # every layer has some damage in its own group
    return mixdq_measured_plans(profile, np.where(content, fin, 0.0), np.where(content, 0.0, fin), budget_bytes,
                                splits)


def test_mixdq_plans_split_the_budget(small_profile):
    info = small_profile.info
    content_layers = [l for l in info.layers if l.role.value in CONTENT_ROLES]
    quality_layers = [l for l in info.layers if l.role.value not in CONTENT_ROLES]
    assert content_layers and quality_layers
    low_c = sum(min(l.nbytes(f) for f in l.eligible) for l in content_layers)
    low_q = sum(min(l.nbytes(f) for f in l.eligible) for l in quality_layers)
    budget = int(0.5 * info.fp_bytes)
    spare = budget - info.fixed_bytes - low_c - low_q
    plans = mixdq_plans(small_profile, budget, (0.0, 0.5, 1.0))
    assert sorted(plans) == [0.0, 0.5, 1.0]
    for a, plan in plans.items():
        content = sum(l.nbytes(plan.layers[l.name]) for l in content_layers)
        quality = sum(l.nbytes(plan.layers[l.name]) for l in quality_layers)
        assert content <= low_c + int(spare * a) and quality <= low_q + int(spare * (1 - a))
        assert plan.predicted_bytes <= budget
    # all spare bytes to one group: the other is at its smallest size
    assert sum(l.nbytes(plans[0.0].layers[l.name]) for l in content_layers) == low_c
    assert sum(l.nbytes(plans[1.0].layers[l.name]) for l in quality_layers) == low_q
    # at the smallest feasible size exactly, every split is the same all-smallest plan; below it, none
    lowest = info.fixed_bytes + low_c + low_q
    assert len(mixdq_plans(small_profile, lowest, (0.3, 0.7))) == 2
    assert mixdq_plans(small_profile, lowest - 1, (0.3, 0.7)) == {}
    with pytest.raises(UsageError, match="share, from 0 to 1"):
        mixdq_plans(small_profile, budget, (1.5,))


def test_choose_split_picks_the_best_normalized_sum(dit_pipe, small_profile, monkeypatch):
    """Stand-in images with hand-set scores where the normalized sum picks a split that neither metric alone
    nor their raw sum would: content (1 - SSIM) 0.10, 0.30, 0.05 and quality (MSE / power) 2e-4, 1e-4, 1e-3
    give 0.10/0.05 + 2e-4/1e-4 = 4, 6 + 1 = 7 and 1 + 10 = 11: split 0.2."""
    import mpsearch.allocation.baselines as baselines

    info = small_profile.info
    plans = mixdq_plans(small_profile, int(0.5 * info.fp_bytes), (0.2, 0.5, 0.8))
    content = {0.2: 0.10, 0.5: 0.30, 0.8: 0.05}
    quality = {0.2: 2e-4, 0.5: 1e-4, 0.8: 1e-3}
    ref = np.full((2, 8, 8, 1), 0.5)  # power 0.25
    images = [ref] + [ref + np.sqrt(quality[a] * 0.25) for a in plans]  # the reference first, then each plan
    monkeypatch.setattr(baselines, "generate_many", lambda *a, **k: images.pop(0))
    monkeypatch.setattr(baselines, "ssim", lambda r, x: 1.0 - content[min(quality, key=lambda a: abs(
        np.mean((x - r) ** 2) / 0.25 - quality[a]))])
    best, scores = choose_split(dit_pipe, plans, labels=(0, 1), seeds=(500,), steps=2)
    assert best == 0.2 and not images
    assert {a: pytest.approx(s["content"]) for a, s in scores.items()} == content
    assert {a: pytest.approx(s["quality"]) for a, s in scores.items()} == quality


def test_choose_split_scores_real_generations(dit_pipe, small_profile):
    from mpsearch.metrics import ssim
    from mpsearch.runtime.executor import apply_plan
    from mpsearch.runtime.generation import generate

    info = small_profile.info
    plans = mixdq_plans(small_profile, int(0.5 * info.fp_bytes), (0.3,))
    best, scores = choose_split(dit_pipe, plans, labels=(0, 1), seeds=(500,), steps=2)
    ref = generate(dit_pipe, [0, 1], 500, 2).astype(np.float64)
    with apply_plan(dit_pipe, plans[0.3], stash="memory", ignore_weights=True):
        img = generate(dit_pipe, [0, 1], 500, 2).astype(np.float64)
    assert best == 0.3
    assert scores[0.3]["quality"] == pytest.approx(np.mean((img - ref) ** 2) / np.mean(ref ** 2), rel=1e-5)
    assert scores[0.3]["content"] == pytest.approx(1.0 - ssim(ref, img), rel=1e-5, abs=1e-7)
    with pytest.raises(UsageError, match="no MixDQ-style split"):
        choose_split(dit_pipe, {})


def test_the_rivals_refuse_calibrated_variants(small_profile):
    with pytest.raises(UsageError, match="round-to-nearest"):
        nominal_bytes(small_profile.info, ("fp", "int8", "int8:clip"))
    from mpsearch.allocation.baselines import mixdq_sensitivity

    with pytest.raises(UsageError, match="round-to-nearest"):
        mixdq_sensitivity(None, small_profile.info, ("fp", "nvfp4:gptq"))


def test_autoquantize_recipes_score_modelopts_calibrated_candidates(dit_pipe):
    """recipes=True: the nvfp4 / int4 slots of Linear layers are AWQ-lite candidates (quantized with the
    calibration given), int8 stays max-calibrated; without the calibration it is a one-line error."""
    from mpsearch.allocation.autoquantize import MODELOPT_RECIPES, autoquantize_scores, recipe_candidates
    from mpsearch.models import describe, get_denoiser
    from mpsearch.profiling.calibrate import calibrate, calibrated_layers
    from mpsearch.profiling.profiler import ProfileConfig

    formats = ("fp", "int8", "nvfp4", "int4")
    info = describe(dit_pipe, formats=[*formats, "nvfp4:awq", "int4:awq"])
    named = dict(get_denoiser(dit_pipe).named_modules())
    modules = [named[layer.name] for layer in info.layers]
    cands = recipe_candidates(info, formats, modules)
    for layer, module, row in zip(info.layers, modules, cands, strict=True):
        for f, c in zip(formats, row, strict=True):
            linear = isinstance(module, torch.nn.Linear) and MODELOPT_RECIPES.get(f, "") in layer.eligible
            assert c == (MODELOPT_RECIPES[f] if linear and f in MODELOPT_RECIPES else f)
    assert any(":awq" in c for row in cands for c in row)
    with pytest.raises(UsageError, match="need the calibration of") as e:
        autoquantize_scores(dit_pipe, info, formats, labels=(0,), seeds=(0,), steps=2, recipes=True)
    assert "\n" not in str(e.value)
    config = ProfileConfig(labels=(0, 1), seeds=(0,), steps=2, formats=("nvfp4:awq", "int4:awq"))
    calibration = calibrate(dit_pipe, info, config, calibrated_layers(info, config.formats), progress=False)
    calib = {info.layers[li].name: c for li, c in calibration.items()}
    plain = autoquantize_scores(dit_pipe, info, formats, labels=(0,), seeds=(0,), steps=2)
    recipe = autoquantize_scores(dit_pipe, info, formats, labels=(0,), seeds=(0,), steps=2, recipes=True,
                                 calibration=calib)
    np.testing.assert_array_equal(recipe[:, :2], plain[:, :2])  # fp and int8: the same candidates
    awq = np.array([[":awq" in c for c in row] for row in cands])
    np.testing.assert_array_equal(recipe[~awq], plain[~awq])
    assert (recipe[awq] != plain[awq]).any()
