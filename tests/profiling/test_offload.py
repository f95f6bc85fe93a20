"""Pipelines larger than the device: profiling through accelerate's offload hooks gives the plain profile.

On the CPU the hooks are accelerate's own, as diffusers installs them: ``enable_model_cpu_offload(device="cpu")``
is diffusers' real path (``CpuOffload`` hooks, re-installed after every generation); sequential offload is
``accelerate.cpu_offload`` per component with the arguments ``enable_sequential_cpu_offload`` uses (diffusers
itself asks for ``cpu:0``, which accelerate 1.x cannot offload to on a CPU), so every parameter lives on the meta
device outside its module's forward. The ``gpu`` tests run diffusers' real calls and a split device map on CUDA.
"""

import numpy as np
import pytest
import torch
from accelerate import cpu_offload, cpu_offload_with_hook
from accelerate.hooks import remove_hook_from_module
from conftest import _scheduler, tiny_dit, tiny_unet  # noqa: F401 (tiny_unet: the gpu device-map test)

from mpsearch.allocation.solving import solve
from mpsearch.apps.pipeline import DigitsPipeline
from mpsearch.apps.profile import profile
from mpsearch.errors import PlanError, UsageError
from mpsearch.models import get_denoiser, weights_digest
from mpsearch.offload import (
    execution_device,
    has_offloaded_weights,
    loaded_tensors,
    materialized,
    model_offload_hook,
    offloads_weights,
)
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate
from mpsearch.runtime.steps import acquire_step_state, release_step_state

# two units: under model offload diffusers re-installs its hooks between them
OPTIONS = dict(labels=(1,), seeds=(0, 1), steps=2, progress=False)


def _pipe(arch):
    kw = {"transformer": tiny_dit()} if arch == "dit" else {"unet": tiny_unet()}
    pipe = DigitsPipeline(scheduler=_scheduler(), **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sequential(pipe, device="cpu"):
    """What ``enable_sequential_cpu_offload`` does, with an execution device accelerate can use on a CPU."""
    for c in pipe.components.values():
        if isinstance(c, torch.nn.Module):
            cpu_offload(c, torch.device(device), offload_buffers=len(c._parameters) > 0)
    return pipe


def _offload(pipe, mode):
    if mode == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    else:
        _sequential(pipe)
    return pipe


def _real_state(den):
    """The denoiser's parameters, read where they live (offloaded ones from accelerate's weights map)."""
    out = {}
    for prefix, m in den.named_modules():
        for name, t in loaded_tensors(m, "cpu").items():
            out[f"{prefix}.{name}" if prefix else name] = t.clone()
    return out


def _same_profile(a, b):
    np.testing.assert_array_equal(a.stats, b.stats)
    np.testing.assert_array_equal(a.block_stats, b.block_stats)
    np.testing.assert_array_equal(a.sensitivity, b.sensitivity)
    assert a.weights == b.weights and a.digest == b.digest


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Plain profiles of the tiny DiT (a conv and linears), exact and sampled."""
    d = tmp_path_factory.mktemp("plain")
    return {sample: profile(_pipe("dit"), out=d / f"{sample}.sqlite", sample=sample, **OPTIONS) for sample in (None, 4)}


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloaded_profile_equals_the_plain_one(plain, tmp_path, mode):
    ref = _pipe("dit")
    pipe = _pipe("dit")
    get_denoiser(pipe).requires_grad_(False)  # as inference code leaves it: the replay must restore the flags
    den = get_denoiser(_offload(pipe, mode))
    before = _real_state(den)
    flags = [p.requires_grad for p in den.parameters()]
    hook = type(den._hf_hook)
    if mode == "sequential":
        assert den.pos_embed.proj.weight.device.type == "meta"
    for sample in (None, 4):
        prof = profile(pipe, out=tmp_path / f"{sample}.sqlite", sample=sample, **OPTIONS)
        _same_profile(prof, plain[sample])  # bit for bit: the same numbers, computed on the same device
    # the model is as it was: accelerate's hooks in place, no mpsearch hook left, weights and flags unchanged
    assert type(den._hf_hook) is hook and not hasattr(den, "_diffusers_hook")
    after = _real_state(den)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert [p.requires_grad for p in den.parameters()] == flags and not any(flags)
    if mode == "model":
        assert next(den.parameters()).device.type == "cpu" and model_offload_hook(den) is not None
    else:
        assert has_offloaded_weights(den)
    np.testing.assert_array_equal(generate(pipe, [1, 2], 0, 3), generate(ref, [1, 2], 0, 3))


def test_hooks_survive_the_offload_being_reinstalled():
    """diffusers re-installs model-offload hooks after every generation (maybe_free_model_hooks); the step state
    registered meanwhile must stay in the chain, and leave the module as it found it."""
    den = tiny_dit()
    cpu_offload_with_hook(den, "cpu")
    state = acquire_step_state(den)
    x, labels = torch.randn(1, 1, 16, 16), torch.tensor([1])
    den(x, timestep=torch.tensor([900]), class_labels=labels)
    remove_hook_from_module(den, recurse=True)  # what enable_model_cpu_offload does first
    cpu_offload_with_hook(den, "cpu")
    den(x, timestep=torch.tensor([800]), class_labels=labels)
    assert state.step == 1  # the second call was seen
    release_step_state(den)
    assert not hasattr(den, "_diffusers_hook") and den._old_forward == den.__class__.forward.__get__(den)
    remove_hook_from_module(den)
    assert "forward" not in den.__dict__ or den.forward == den.__class__.forward.__get__(den)
    den(x, timestep=torch.tensor([900]), class_labels=labels)


def test_offload_helpers_read_weights_where_they_are_kept():
    lin = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    w = lin[0].weight.detach().clone()
    digest = weights_digest(lin, ["0", "1"])
    cpu_offload(lin, torch.device("cpu"))
    assert lin[0].weight.device.type == "meta" and offloads_weights(lin[0]) and has_offloaded_weights(lin)
    with materialized(lin[0]):
        assert torch.equal(lin[0].weight, w)
    assert lin[0].weight.device.type == "meta"
    assert torch.equal(loaded_tensors(lin[0])["weight"], w)
    assert execution_device(lin) == torch.device("cpu")
    assert weights_digest(lin, ["0", "1"]) == digest
    plain = torch.nn.Linear(2, 2)
    with materialized(plain):
        assert plain.weight.device.type == "cpu"
    assert not offloads_weights(plain) and model_offload_hook(plain) is None


def test_plans_on_offloaded_pipelines(plain, tmp_path):
    """Model offload: a plan applies and runs as on the plain pipeline. Sequential offload: a one-line error."""
    plan = solve(plain[None], budget="60%")
    ref = _pipe("dit")
    with apply_plan(ref, plan):
        expected = generate(ref, [1, 2], 0, 3)
    pipe = _offload(_pipe("dit"), "model")
    with apply_plan(pipe, plan):
        np.testing.assert_array_equal(generate(pipe, [1, 2], 0, 3), expected)
        np.testing.assert_array_equal(generate(pipe, [1, 2], 0, 3), expected)  # after diffusers' re-hooking
    np.testing.assert_array_equal(generate(pipe, [1, 2], 0, 3), generate(ref, [1, 2], 0, 3))
    seq = _offload(_pipe("dit"), "sequential")
    with pytest.raises(PlanError, match="offloaded by accelerate.*enable_model_cpu_offload"):
        apply_plan(seq, plan)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_latency_and_compute_recordings_refuse_offloaded_denoisers(mode):
    from mpsearch.profiling.latency import measure_latency
    from mpsearch.profiling.layer_calls import record_layer_calls

    pipe = _offload(_pipe("dit"), mode)
    with pytest.raises(UsageError, match="offloaded"):
        measure_latency(pipe, steps=1, progress=False)
    with pytest.raises(UsageError, match="offloaded"):
        record_layer_calls(pipe, steps=1)


# ------------------------------------------------------------------------------------------------ on CUDA

def _close(a, b, rtol=1e-4):
    for x, y in ((a.stats, b.stats), (a.block_stats, b.block_stats), (a.sensitivity, b.sensitivity)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12, equal_nan=True)
    assert a.weights == b.weights


@pytest.fixture
def tiny_sd15():
    from mpsearch.apps.testing import build_tiny_pipeline

    return lambda: build_tiny_pipeline("sd15")


GPU_OPTIONS = dict(prompts=("a cat", "a red dog"), seeds=(0, 1), steps=3, progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_gpu_diffusers_offload_equals_the_plain_profile(tiny_sd15, tmp_path, mode):
    ref = tiny_sd15().to("cuda")
    expected = profile(ref, out=tmp_path / "plain.sqlite", **GPU_OPTIONS)
    pipe = tiny_sd15()
    if mode == "model":
        pipe.enable_model_cpu_offload()
    else:
        pipe.enable_sequential_cpu_offload()
    assert pipe._execution_device.type == "cuda"
    for sample in (None, 4):
        got = profile(pipe, out=tmp_path / f"{mode}-{sample}.sqlite", sample=sample, **GPU_OPTIONS)
        if sample is None:
            _close(got, expected)
        else:
            _close(got, profile(ref, out=tmp_path / "plain-4.sqlite", sample=4, **GPU_OPTIONS))
    unet = pipe.unet
    if mode == "model":
        assert next(unet.parameters()).device.type == "cpu"  # back where the pipeline keeps it
    else:
        assert unet.conv_in.weight.device.type == "meta"
    assert not hasattr(unet, "_diffusers_hook")
    np.testing.assert_allclose(generate(pipe, ["a cat"], 0, 3), generate(ref, ["a cat"], 0, 3), atol=1e-4)


@pytest.mark.gpu
def test_gpu_device_map_split_between_cuda_and_cpu(tmp_path):
    """A denoiser split by a device map: every other top-level part offloaded to the CPU (run on cuda:0)."""
    from accelerate import dispatch_model

    ref = _pipe("unet").to("cuda")
    expected = profile(ref, out=tmp_path / "plain.sqlite", **OPTIONS)
    pipe = _pipe("unet")
    den = pipe.unet
    device_map = {name: (0 if i % 2 == 0 else "cpu") for i, (name, _) in enumerate(den.named_children())}
    dispatch_model(den, device_map=device_map, main_device=0)
    assert has_offloaded_weights(den) and execution_device(den).type == "cuda"
    _close(profile(pipe, out=tmp_path / "mapped.sqlite", **OPTIONS), expected)
    _close(profile(pipe, out=tmp_path / "mapped-4.sqlite", sample=4, **OPTIONS),
           profile(ref, out=tmp_path / "plain-4.sqlite", sample=4, **OPTIONS))
