import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.apps.profile import ProfileConfig, profile
from mpsearch.errors import ProfileError, UsageError
from mpsearch.formats import get_format
from mpsearch.profiling.store import Profile


class HandDenoiser(nn.Module):
    """Two linears and a 'block'; inputs are fixed per step, so the error can be computed by hand."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Linear(32, 16)
        self.b = nn.Linear(16, 8, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.randn(16, 32, generator=g))
            self.b.weight.copy_(torch.randn(8, 16, generator=g))
        self.transformer_blocks = nn.ModuleList([nn.Identity()])

    def forward(self, x, timestep=None, class_labels=None):
        return self.b(self.a(self.transformer_blocks[0](x)))


class HandPipe:
    """The smallest pipeline mpsearch can profile: step s feeds x_s = (s + 1) * base to the denoiser."""

    def __init__(self):
        self.transformer = HandDenoiser()

    def inputs(self, labels, seed, steps):
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(len(labels), 4, 32, generator=g)
        return [base * (s + 1) for s in range(steps)]

    def __call__(self, class_labels, num_inference_steps, generator, output_type="np", guidance_scale=None):
        seed = generator.initial_seed()
        for s, x in enumerate(self.inputs(class_labels, seed, num_inference_steps)):
            self.transformer(x, timestep=torch.tensor(1000 - s))
        return type("Out", (), {"images": np.zeros((len(class_labels), 2, 2, 1), np.float32)})()


@torch.no_grad()
def _expected(pipe, config, layer, fmt_name):
    """rel_mse per step by hand: run the layer in full precision and through the format's own recipe."""
    f = get_format(fmt_name)
    den = pipe.transformer
    err2 = np.zeros(config.steps)
    ref2 = np.zeros(config.steps)
    for seed in config.seeds:
        for s, x in enumerate(pipe.inputs(config.labels, seed, config.steps)):
            inp = x if layer == "a" else den.a(x)
            mod = getattr(den, layer)
            y = mod(inp).double()
            xa = f.quantize_activation(inp.reshape(-1, inp.shape[-1])) if f.quantizes_activations else inp.reshape(-1, inp.shape[-1])
            yq = xa @ f.dequantize(f.quantize(mod.weight.detach())).t()
            if mod.bias is not None:
                yq = yq + mod.bias
            yq = yq.reshape(y.shape).double()
            err2[s] += float(((yq - y) ** 2).sum())
            ref2[s] += float((y ** 2).sum())
    return err2 / ref2


def test_numbers_match_a_hand_computation(tmp_path):
    pipe = HandPipe()
    config = ProfileConfig(labels=(0, 1), seeds=(3, 4), steps=3, formats=("int8", "nvfp4", "int4"))
    prof = profile(pipe, config, out=tmp_path / "p.sqlite", progress=False, variants="none")
    assert prof.layer_names == ("a", "b")
    assert prof.formats == ("fp", "int8", "nvfp4", "int4")
    rel = prof.metric("rel_mse")
    assert rel.shape == (2, 4, 3)
    assert (rel[:, 0] == 0).all()
    assert np.isnan(rel[:, 3]).all()  # int4 needs input dims that are multiples of 128
    for li, layer in enumerate(("a", "b")):
        for fi, fmt in ((1, "int8"), (2, "nvfp4")):
            np.testing.assert_allclose(rel[li, fi], _expected(pipe, config, layer, fmt), rtol=1e-4)
    # sqnr and cosine come from the same statistics
    np.testing.assert_allclose(prof.metric("sqnr")[:, 1:3], -10 * np.log10(rel[:, 1:3]), rtol=1e-9)
    assert ((prof.metric("cosine")[:, 1:3] > 0.9) & (prof.metric("cosine")[:, 1:3] <= 1 + 1e-12)).all()
    # the block's output grows linearly with the step: ||o_s - o_{s-1}||^2 / ||o_s||^2 = 1 / (s+1)^2
    np.testing.assert_allclose(prof.block_change()[0, 1:], [1 / 4, 1 / 9], rtol=1e-6)
    # the model was left in full precision, hooks removed
    assert not pipe.transformer.a._forward_hooks and not pipe.transformer._forward_pre_hooks


def test_resume_and_refuse_foreign(tmp_path):
    pipe = HandPipe()
    config = ProfileConfig(labels=(0,), seeds=(0, 1, 2), steps=2, formats=("int8",))
    out = tmp_path / "p.sqlite"
    full = profile(pipe, config, out=tmp_path / "full.sqlite", progress=False)
    profile(pipe, config, out=out, shard=(1, 2), progress=False)
    part = Profile.load(out)
    assert part.units == (1,)
    resumed = profile(pipe, config, out=out, progress=False)
    assert resumed.units == (0, 1, 2)
    np.testing.assert_array_equal(resumed.stats, full.stats)
    with pytest.raises(ProfileError, match="another configuration"):
        profile(pipe, ProfileConfig(labels=(0,), seeds=(0, 1, 2), steps=3, formats=("int8",)), out=out, progress=False)


def test_bad_files_and_configs(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        Profile.load(tmp_path / "none.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ProfileError):
        Profile.load(junk)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.commit()
    with pytest.raises(ProfileError, match="not an mpsearch profile"):
        Profile.load(other)
    with pytest.raises(UsageError, match="labels is empty"):
        ProfileConfig(labels=())
    with pytest.raises(UsageError, match="steps"):
        ProfileConfig(steps=0)
    with pytest.raises(UsageError, match="formats"):
        ProfileConfig(formats=("int3",))


@pytest.mark.parametrize("seeds", [(-1,), (0, -5), (2**32,)])
def test_seeds_are_non_negative_32_bit(seeds):
    """A negative seed profiled and wrote a profile before; seeds are 0 .. 2**32 - 1 like --seeds."""
    with pytest.raises(UsageError, match="seeds must be integers from 0 to 4,294,967,295"):
        ProfileConfig(seeds=seeds, labels=(0,), steps=1)
    assert ProfileConfig(seeds=(0, 2**32 - 1), labels=(0,), steps=1).seeds == (0, 2**32 - 1)


def test_profile_on_diffusers_models(any_pipe, tmp_path):
    prof = profile(any_pipe, out=tmp_path / "p.sqlite", labels=(1, 2), seeds=(0,), steps=3, progress=False)
    rel = prof.metric("rel_mse")
    eligible = ~np.isnan(rel)
    assert eligible[:, 1].all()  # int8 takes every layer
    assert (rel[eligible] >= 0).all() and (rel[:, 1:][eligible[:, 1:]] > 0).all()
    # int8 (W8A8) is on average far more accurate than W4A4 nvfp4 where both apply
    both = eligible[:, 1, 0] & eligible[:, 2, 0]
    assert np.median(rel[both, 1]) < np.median(rel[both, 2])
    assert np.isfinite(prof.block_change()[:, 1:]).all()


def test_profile_file_defaults_to_the_models_name(tmp_path, monkeypatch):
    """Without ``out``, the profile goes to profiles/<name the pipeline was loaded by>.sqlite, not default.sqlite."""
    import mpsearch
    from mpsearch.profiling.profiler import model_name

    monkeypatch.chdir(tmp_path)
    unet = mpsearch.load_pipeline("default-unet")
    assert model_name(unet) == "default-unet" and model_name(mpsearch.load_pipeline("default")) == "default"
    prof = mpsearch.profile(unet, steps=2, seeds=(0,), labels=(1,), progress=False)
    assert (tmp_path / "profiles" / "default-unet.sqlite").is_file() and prof.info.fingerprint
    assert not (tmp_path / "profiles" / "default.sqlite").exists()


@pytest.mark.parametrize("sample", [None, 2])
def test_a_non_finite_layer_output_is_named_and_a_huge_finite_one_is_not(sample):
    from types import SimpleNamespace

    from mpsearch.profiling.profiler import _Accumulator, _LayerProbe
    lin = nn.Linear(3, 4)
    acc = _Accumulator(np.zeros((1, 2, 1, 4)), np.zeros((0, 1, 2)))
    probe = _LayerProbe(0, lin, [(1, "int8")], SimpleNamespace(step=0), [acc], "blocks.0.ff", sample)
    x = torch.randn(5, 3)
    huge = torch.full((5, 4), 3e38)  # finite, but its float32 sum overflows: the exact check decides
    probe(lin, (x,), huge)
    bad = huge.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ProfileError, match="blocks.0.ff gave a full-precision output that is not finite"):
        probe(lin, (x,), bad)
