"""Output sensitivity (mpsearch.profiling.sensitivity) and the `gn` metric it gives the profile."""

import shutil
import sqlite3

import numpy as np
import pytest
import torch
from conftest import Tiny  # a two-layer MLP whose Jacobians are worked out by hand

import mpsearch
from mpsearch.allocation.objective import layer_costs, resolve_metric
from mpsearch.apps.profile import profile
from mpsearch.errors import ProfileError
from mpsearch.profiling.sensitivity import CallRecorder, output_sensitivity
from mpsearch.profiling.store import Profile, merge_profiles


def test_scalar_output_is_exact():
    # one output element: u = +-1, so ||J^T u||^2 is the Jacobian's squared norm exactly
    m = Tiny(out=1)
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(1))
    got = output_sensitivity(m, [(0, (x,), {})], [m.a, m.b], 1, samples=3)
    with torch.no_grad():
        ya = m.a(x)
        ja = m.b.weight[0] * (1 - torch.tanh(ya[0]) ** 2)  # d f / d y_a
    assert got[0, 0, 0] == pytest.approx(float(ja.double().square().sum()), rel=1e-6)  # float32 gradients
    assert got[1, 0, 0] == pytest.approx(1.0, rel=1e-12)  # f = y_b
    assert got[0, 0, 1] == 4 and got[1, 0, 1] == 1  # output elements


def test_vector_output_is_unbiased_and_steps_are_kept_apart():
    m = Tiny(out=5)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    got = output_sensitivity(m, [(1, (x,), {})], [m.a, m.b], 3, samples=500)
    assert (got[:, [0, 2]] == 0).all()
    J = torch.autograd.functional.jacobian(lambda ya: m.b(torch.tanh(ya)), m.a(x).detach())
    assert got[0, 1, 0] == pytest.approx(float(J.double().square().sum()), rel=0.1)
    assert got[1, 1, 0] == pytest.approx(30.0, rel=1e-9)  # J = I on 6 x 5 outputs, exactly for any u
    assert got[0, 1, 1] == 24 and got[1, 1, 1] == 30


def test_model_left_as_it_was():
    m = Tiny(out=2)
    m.a.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    output_sensitivity(m, [(0, (torch.randn(2, 3),), {})], [m.a, m.b], 1)
    assert m.a.weight.requires_grad is False and m.b.weight.requires_grad is True
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not m._forward_hooks
    assert (output_sensitivity(m, [], [m.a], 2) == 0).all()


def test_recorder_keeps_inputs_and_steps(dit_pipe):
    from mpsearch.runtime.generation import generate
    den = dit_pipe.transformer
    with CallRecorder().install(den) as rec:
        generate(dit_pipe, (0, 1), 0, 3)
    assert not hasattr(den, "_diffusers_hook") and "forward" not in vars(den)  # both hooks are off again
    assert [s for s, _, _ in rec.calls] == [0, 1, 2]
    x = rec.calls[0][2].get("hidden_states", rec.calls[0][1][0] if rec.calls[0][1] else None)
    assert isinstance(x, torch.Tensor) and not x.requires_grad


@pytest.fixture
def prof(dit_pipe, tmp_path):
    return profile(dit_pipe, out=tmp_path / "p.sqlite", labels=(0, 1), seeds=(0, 1), steps=3, progress=False)


def test_profile_has_gn(prof, dit_pipe):
    assert prof.sensitivity.shape == (len(prof.info.layers), 3, 2)
    assert (prof.sensitivity[..., 1] > 0).all() and (prof.sensitivity[..., 0] > 0).all()
    gn = prof.metric("gn")
    np.testing.assert_array_equal(np.isnan(gn), np.isnan(prof.stats[..., 0]))
    # proj_out_2 is the DiT's output, only unpatchified: its Jacobian is a permutation, so ||J^T u||^2 = n
    # exactly for any u and an error in it reaches the denoiser's output unchanged: gn is its own error there
    out = prof.info.names.index("proj_out_2")
    np.testing.assert_array_equal(prof.sensitivity[out, :, 0], prof.sensitivity[out, :, 1])
    np.testing.assert_allclose(gn[out], prof.stats[out, ..., 0], rtol=1e-12)
    # n counts each layer's output elements per step: recounted here with forward hooks on a generation of one
    # of the profile's two seeds (the same labels and steps), so n is twice the count
    from mpsearch.runtime.generation import generate

    den = dit_pipe.transformer
    counted = np.zeros(prof.sensitivity.shape[:2])
    step = [0]
    hs = [den.get_submodule(n).register_forward_hook(
        lambda m, a, y, i=i: counted.__setitem__((i, min(step[0], 2)), counted[i, min(step[0], 2)] + y.numel()))
        for i, n in enumerate(prof.info.names)]
    hs.append(den.register_forward_hook(lambda *a: step.__setitem__(0, step[0] + 1)))
    try:
        generate(dit_pipe, (0, 1), 0, 3)
    finally:
        for h in hs:
            h.remove()
    np.testing.assert_array_equal(prof.sensitivity[..., 1], 2 * counted)
    assert resolve_metric(prof) == "gn" and "gn" in prof.metrics
    plan = mpsearch.solve(prof, "50%", role_pins={})
    assert plan.provenance["metric"] == "gn"


def test_replay_does_not_touch_the_local_measurements(dit_pipe, tmp_path, monkeypatch):
    a = profile(dit_pipe, out=tmp_path / "a.sqlite", labels=(0, 1), seeds=(0,), steps=3, progress=False)
    import mpsearch.profiling.profiler as profiler

    monkeypatch.setattr(profiler, "output_sensitivity", lambda den, calls, mods, steps, **k: np.zeros((len(mods), steps, 2)))
    b = profile(dit_pipe, out=tmp_path / "b.sqlite", labels=(0, 1), seeds=(0,), steps=3, progress=False)
    np.testing.assert_array_equal(a.stats, b.stats)
    np.testing.assert_array_equal(a.block_stats, b.block_stats)
    assert a.digest != b.digest  # the sensitivity is part of what the digest covers


def test_shards_merge_to_the_same_sensitivity(dit_pipe, tmp_path, prof):
    parts = [profile(dit_pipe, out=tmp_path / f"s{i}.sqlite", labels=(0, 1), seeds=(0, 1), steps=3, shard=(i, 2),
                     progress=False) for i in range(2)]
    merged = merge_profiles([p.path for p in parts], tmp_path / "m.sqlite")
    np.testing.assert_array_equal(merged.sensitivity, prof.sensitivity)
    assert merged.digest == prof.digest


def test_older_profile_without_sensitivity(prof, tmp_path):
    old = tmp_path / "old.sqlite"
    shutil.copy(prof.path, old)
    with sqlite3.connect(old) as conn:  # as schema 1 wrote it before sensitivity was measured
        conn.execute("DROP TABLE sensitivity")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    p = Profile.load(old)
    assert p.sensitivity is None and "gn" not in p.metrics
    with pytest.raises(ProfileError, match="no output-sensitivity measurements"):
        p.metric("gn")
    assert resolve_metric(p) == "rel_mse"
    np.testing.assert_array_equal(layer_costs(p), layer_costs(prof, "rel_mse"))
    assert mpsearch.solve(p, "50%", role_pins={}).provenance["metric"] == "rel_mse"
    # one unit without its rows (profiled by an older version, then resumed): not all units -> unavailable
    part = tmp_path / "part.sqlite"
    shutil.copy(prof.path, part)
    with sqlite3.connect(part) as conn:
        conn.execute("DELETE FROM sensitivity WHERE unit = 1")
    assert Profile.load(part).sensitivity is None
    bad = tmp_path / "bad.sqlite"
    shutil.copy(prof.path, bad)
    with sqlite3.connect(bad) as conn:
        conn.execute("UPDATE sensitivity SET g2 = -1 WHERE unit = 0 AND layer = 0 AND step = 0")
    with pytest.raises(ProfileError, match="corrupt"):
        Profile.load(bad)


def test_float16_matches_float32():
    m = Tiny(out=3)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    ref = output_sensitivity(m, [(0, (x,), {})], [m.a, m.b], 1, samples=4)
    h = Tiny(out=3).half()
    got = output_sensitivity(h, [(0, (x.half(),), {})], [h.a, h.b], 1, samples=4)
    np.testing.assert_allclose(got, ref, rtol=2e-2)


def test_micro_batches_give_the_whole_calls_sums():
    # rows of a batch are independent, and the Rademacher draws of the halves are the whole call's draws in
    # order, so the replay in micro-batches sums to the replay of whole calls (up to float64 summation order)
    from mpsearch.profiling.sensitivity import micro_batches

    m = Tiny(out=3)
    g = torch.Generator().manual_seed(5)
    calls = [(0, (torch.randn(4, 3, generator=g),), {}), (1, (torch.randn(4, 3, generator=g),), {})]
    whole = output_sensitivity(m, calls, [m.a, m.b], 2, samples=1, seed=9)
    for size in (1, 3):
        parts = output_sensitivity(m, calls, [m.a, m.b], 2, samples=1, seed=9, batch=size)
        assert parts[..., 1].tolist() == whole[..., 1].tolist()
        np.testing.assert_allclose(parts[..., 0], whole[..., 0], rtol=1e-12)
    # with several samples per call the draws interleave differently: the same expectation, other numbers
    many = output_sensitivity(m, calls, [m.a, m.b], 2, samples=400, seed=9)
    np.testing.assert_allclose(output_sensitivity(m, calls, [m.a, m.b], 2, samples=400, seed=9, batch=1), many,
                               rtol=0.1)
    x = torch.arange(10.0).reshape(5, 2)
    cut = micro_batches((x, torch.tensor(3)), {"c": {"e": x[:, :1]}, "t": torch.zeros(2), "n": None}, 2)
    assert [a[0].shape[0] for a, _ in cut] == [2, 2, 1]
    assert all(a[1].dim() == 0 and k["t"].shape == (2,) and k["n"] is None for a, k in cut)  # not batch-sized
    assert torch.equal(torch.cat([k["c"]["e"] for _, k in cut]), x[:, :1])
    assert micro_batches((x,), {}, None) == [((x,), {})] and len(micro_batches((x,), {}, 8)) == 1


def test_a_row_subset_is_an_unbiased_estimate_of_the_whole_calls_sums():
    from mpsearch.profiling.sensitivity import row_subset

    m = Tiny(out=3)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, generator=g) * torch.tensor([[0.2], [1.0], [3.0], [0.5]])  # rows of unequal weight
    calls = [(0, (x,), {})]
    whole = output_sensitivity(m, calls, [m.a, m.b], 1, samples=2000, seed=1)
    # the last layer's J is I: every estimate is exact, scaled to the whole batch's 12 elements
    one = output_sensitivity(m, calls, [m.a, m.b], 1, samples=1, seed=1, rows=1)
    assert one[1, 0, 0] == pytest.approx(12.0, rel=1e-12) and one[:, 0, 1].tolist() == [16.0, 12.0]
    # the first layer: the mean over seeds of the one-row estimate (x 4) is the whole call's sum
    est = np.mean([output_sensitivity(m, calls, [m.a, m.b], 1, samples=50, seed=s, rows=1)[0, 0, 0]
                   for s in range(60)])
    assert est == pytest.approx(whole[0, 0, 0], rel=0.1)
    # each draw is one row's sum times 4; the rows differ, so the draws do too
    per_row = [output_sensitivity(m, [(0, (x[i:i + 1],), {})], [m.a, m.b], 1, samples=2000, seed=2)[0, 0, 0]
               for i in range(4)]
    assert sum(per_row) == pytest.approx(whole[0, 0, 0], rel=0.05)
    # as many rows as the batch (or more), or None: the whole call, the same numbers
    for rows in (4, 9, None):
        np.testing.assert_array_equal(output_sensitivity(m, calls, [m.a, m.b], 1, samples=3, seed=4, rows=rows),
                                      output_sensitivity(m, calls, [m.a, m.b], 1, samples=3, seed=4))
    # the subset takes the same rows from every batch-sized tensor, and leaves the others
    gen = torch.Generator().manual_seed(0)
    a, k, w = row_subset((x, torch.tensor(7)), {"c": {"e": x[:, :1]}, "t": torch.zeros(2)}, 2, gen)
    assert w == 2.0 and a[0].shape == (2, 3) and a[1].dim() == 0 and k["t"].shape == (2,)
    assert torch.equal(k["c"]["e"], a[0][:, :1])
    assert all(any(torch.equal(r, xr) for xr in x) for r in a[0])


def test_held_activations_count_what_a_replay_holds_without_holding_it(dit_pipe):
    # the bytes autograd would keep for one replayed micro-batch's backward pass: the same count as a forward
    # pass that really keeps them (every storage alive, so each counted once), proportional to the rows, and
    # the model left as it was
    from mpsearch.profiling.sensitivity import _gradient_graph, held_activations, micro_batches
    from mpsearch.runtime.generation import generate

    den = dit_pipe.transformer
    modules = [m for m in den.modules() if isinstance(m, torch.nn.Linear)]
    with CallRecorder().install(den) as rec:
        generate(dit_pipe, (0, 1, 2, 3), 0, 2)
    calls = rec.calls
    flags = {n: p.requires_grad for n, p in den.named_parameters()}
    one, seconds = held_activations(den, calls, modules, 2, batch=1)
    two, _ = held_activations(den, calls, modules, 2, batch=2)
    assert one > 0 and seconds > 0 and 1.8 < two / one < 2.2
    assert {n: p.requires_grad for n, p in den.named_parameters()} == flags and not den._forward_hooks

    kept, params = [], {p.untyped_storage().data_ptr() for p in den.parameters()}
    with _gradient_graph(den, modules), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        args, kwargs = micro_batches(calls[0][1], calls[0][2], 1)[0]  # the first row of the first call
        y = den(*args, **kwargs)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}
        del y
    assert one == sum(n for ptr, n in storages.items() if ptr not in params)


def test_the_recorder_copies_an_input_passed_unchanged_once():
    # the conditioning a pipeline passes at every step is copied once; a changed or new tensor gets its own copy
    m = Tiny(out=2)
    cond, x = torch.randn(2, 3), torch.randn(2, 3)
    with CallRecorder().install(m) as rec:
        for _ in range(3):
            m(x + 1)  # a new input tensor each call
        x.add_(1)  # the same tensor, changed in place: a new copy
        m(x)
        m(x)
    copies = [args[0] for _, args, _ in rec.calls]
    assert [c.data_ptr() for c in copies[:3]] != [copies[0].data_ptr()] * 3  # new tensors: new copies
    assert copies[3] is copies[4] and torch.equal(copies[3], x)
    assert all(not c.requires_grad for c in copies)
    rec.calls.clear()
    with CallRecorder().install(m) as rec2:
        m(cond)
        m(cond)
        rec2.calls.pop(0), rec2.calls.pop(0)
        cond.mul_(2)
        m(cond)
    assert torch.equal(rec2.calls[0][1][0], cond)  # copied after the change, not the old copy
