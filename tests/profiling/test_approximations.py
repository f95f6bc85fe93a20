"""The profiler's opt-in approximations and savings for real-size models: sampled statistics (``sample``), a
subset of replayed steps (``replay_steps``), micro-batched and block-checkpointed replays (``replay_batch``,
``replay_checkpoint``) and the ``--estimate`` forecast."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mpsearch.apps.cli import main
from mpsearch.apps.profile import ProfileConfig, profile
from mpsearch.errors import UsageError
from mpsearch.profiling.sensitivity import output_sensitivity, replayed_steps

BASE = dict(labels=(0, 1, 2), seeds=(0,), steps=3, formats=("int8", "nvfp4"))


def _stats(p):
    return np.asarray(p.stats[..., 0], dtype=float)  # (layers, formats, steps): squared output error


@pytest.mark.parametrize("key", ["sample", "replay_steps", "replay_batch", "replay_rows"])
@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_options_must_be_positive_integers(key, bad):
    with pytest.raises(UsageError, match=key):
        ProfileConfig(**{key: bad})


def test_options_are_left_out_of_the_stored_config_when_unset():
    d = ProfileConfig().to_dict()
    assert not {"sample", "replay_steps", "replay_batch", "replay_rows"} & set(d)
    assert ProfileConfig(sample=8, replay_steps=2, replay_batch=1).to_dict()["replay_batch"] == 1
    assert ProfileConfig(replay_rows=1).to_dict()["replay_rows"] == 1  # what is measured: a resume must match


def test_replayed_steps_spread_evenly():
    assert replayed_steps(20, None) == list(range(20)) and replayed_steps(4, 9) == [0, 1, 2, 3]
    assert replayed_steps(20, 1) == [9]
    assert replayed_steps(20, 5) == [0, 5, 10, 14, 19]


def test_sampled_covering_everything_equals_exact(dit_pipe, tmp_path):
    # a sample at least as large as every layer's channels and rows measures every element: the same sums
    ex = profile(dit_pipe, out=tmp_path / "e.sqlite", progress=False, **BASE)
    full = profile(dit_pipe, out=tmp_path / "s.sqlite", progress=False, sample=10**6, **BASE)
    np.testing.assert_allclose(_stats(full), _stats(ex), rtol=2e-4, equal_nan=True)


def test_small_sample_ranks_layers_like_exact_and_is_seeded(dit_pipe, tmp_path):
    ex = profile(dit_pipe, out=tmp_path / "e.sqlite", progress=False, **BASE)
    s1 = profile(dit_pipe, out=tmp_path / "s1.sqlite", progress=False, sample=8, **BASE)
    s2 = profile(dit_pipe, out=tmp_path / "s2.sqlite", progress=False, sample=8, **BASE)
    a, b = _stats(ex).sum(axis=2), _stats(s1).sum(axis=2)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0)
    assert spearmanr(a[ok], b[ok]).statistic > 0.9
    assert np.array_equal(_stats(s1), _stats(s2), equal_nan=True)  # the same seeded subsets


def test_replay_options(dit_pipe, tmp_path):
    full = profile(dit_pipe, out=tmp_path / "f.sqlite", progress=False, **BASE)
    same = profile(dit_pipe, out=tmp_path / "b.sqlite", progress=False, replay_batch=1, **BASE)
    assert same.sensitivity[..., 1].tolist() == full.sensitivity[..., 1].tolist()
    np.testing.assert_allclose(same.sensitivity, full.sensitivity, rtol=1e-5)  # float32 GEMMs of another shape
    one = profile(dit_pipe, out=tmp_path / "r.sqlite", progress=False, replay_steps=1, **BASE)
    mid = replayed_steps(BASE["steps"], 1)[0]
    # the replayed step: the same elements (its Rademacher draws come first in the stream, so its sums differ)
    assert one.sensitivity[:, mid, 1].tolist() == full.sensitivity[:, mid, 1].tolist()
    for s in range(BASE["steps"]):  # the others carry the replayed step's values (nothing to interpolate between)
        assert one.sensitivity[:, s].tolist() == one.sensitivity[:, mid].tolist()


def test_replay_rows_estimate_the_whole_batch(dit_pipe, tmp_path, monkeypatch):
    from mpsearch.profiling import sensitivity

    guided = dict(BASE, guidance_scale=2.0, steps=4)  # a guidance batch of two rows per denoiser call
    full = profile(dit_pipe, out=tmp_path / "f.sqlite", progress=False, **guided)
    replayed = []
    real = sensitivity.micro_batches
    monkeypatch.setattr(sensitivity, "micro_batches",
                        lambda a, k, size: replayed.append(sensitivity._batch_size(a, k)) or real(a, k, size))
    half = profile(dit_pipe, out=tmp_path / "h.sqlite", progress=False, replay_rows=1, **guided)
    assert replayed and set(replayed) == {1}  # one row of each call replayed
    # scaled to the whole batch: the same element counts; sums that rank the layers alike
    assert half.sensitivity[..., 1].tolist() == full.sensitivity[..., 1].tolist()
    a, b = full.sensitivity[..., 0].sum(axis=1), half.sensitivity[..., 0].sum(axis=1)
    assert not np.array_equal(a, b) and spearmanr(a, b).statistic > 0.9


def test_estimate_predicts_without_writing(tmp_path, capsys):
    out = tmp_path / "p.sqlite"
    rc = main(["profile", "--model", "default", "--out", str(out), "--steps", "3", "--seeds", "0,1",
               "--labels", "0,1", "--estimate", "--json", "--replay-rows", "1", "--replay-checkpoint"])
    assert rc == 0 and not out.exists()
    est = json.loads(capsys.readouterr().out)
    text = json.dumps(est)
    assert "seconds" in text and "peak" in text


@pytest.mark.parametrize("pipe_name", ["dit_pipe", "unet_pipe"])
def test_replay_checkpoint_gives_the_same_numbers_and_leaves_the_model_as_it_was(pipe_name, request, tmp_path):
    pipe = request.getfixturevalue(pipe_name)
    den = pipe.transformer if pipe_name == "dit_pipe" else pipe.unet
    full = profile(pipe, out=tmp_path / "f.sqlite", progress=False, **BASE)
    for share in (True, 0.5):
        ck = profile(pipe, out=tmp_path / f"c{share}.sqlite", progress=False, replay_checkpoint=share, **BASE)
        assert ck.sensitivity.tolist() == full.sensitivity.tolist()  # recomputed blocks: bit for bit
        assert not den.is_gradient_checkpointing
    assert "replay_checkpoint" not in ProfileConfig(replay_checkpoint=True).to_dict()  # how, not what: resumes


def test_replay_checkpoint_keeps_only_block_inputs(dit_pipe):
    # what autograd saves outside the checkpointed blocks: with checkpointing, only each block's inputs
    den = dit_pipe.transformer
    x = torch.randn(2, den.config.in_channels, den.config.sample_size, den.config.sample_size)
    kwargs = dict(timestep=torch.tensor([3, 3]), class_labels=torch.tensor([1, 2]))
    mods = [m for m in den.modules() if isinstance(m, torch.nn.Linear)]

    def saved_bytes(checkpoint):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = output_sensitivity(den, [(0, (x,), kwargs)], mods, 1, checkpoint=checkpoint)
        return total[0], out
    plain, a = saved_bytes(False)
    ck, b = saved_bytes(True)
    half, c = saved_bytes(0.5)
    assert a.tolist() == b.tolist() == c.tolist()
    assert ck < plain / 2
    assert ck < half < plain  # half the blocks checkpointed: in between


def test_a_share_checkpoints_that_share_of_the_block_calls_evenly_spread():
    from mpsearch.profiling.sensitivity import _checkpointing_share

    for share, want in ((0.5, [1, 3, 5, 7]), (0.25, [3, 7]), (1.0, list(range(8))), (0.3, [3, 6])):
        fn, restart = _checkpointing_share(share)
        hit = []
        real = torch.utils.checkpoint.checkpoint
        try:
            torch.utils.checkpoint.checkpoint = lambda f, *a, **k: hit.append(len(calls)) or f(*a)  # noqa: B023 (this iteration)
            calls = []
            for _ in range(8):
                calls.append(fn(lambda v: v + 1, 1))
        finally:
            torch.utils.checkpoint.checkpoint = real
        assert [h for h in hit] == want and calls == [2] * 8
        restart()


def test_a_bad_share_is_a_one_line_error():
    with pytest.raises(UsageError, match="share of blocks"):
        ProfileConfig(replay_checkpoint=1.5)
    with pytest.raises(UsageError, match="share of blocks"):
        ProfileConfig(replay_checkpoint=0)


def test_replay_checkpoint_on_a_denoiser_without_it_is_a_usage_error():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    with pytest.raises(UsageError, match="replay-checkpoint"):
        output_sensitivity(m, [(0, (torch.randn(2, 3),), {})], [m[0], m[1]], 1, checkpoint=True)


def test_the_cli_takes_a_share_or_all_blocks(tmp_path):
    from mpsearch.apps.cli.parser import build_parser
    from mpsearch.apps.cli.profiling import _profile_config

    p = build_parser()

    def share(*argv):
        return _profile_config(p.parse_args(["profile", *argv]), tmp_path / "p.sqlite").replay_checkpoint

    assert share("--replay-checkpoint") is True
    assert share("--replay-checkpoint", "0.5") == 0.5
    assert share() is False
    assert ProfileConfig(replay_checkpoint=1.0).replay_checkpoint is True  # a share of 1: every block
    with pytest.raises(UsageError, match=r"--replay-checkpoint: expected a number in \(0, 1\]"):
        p.parse_args(["profile", "--replay-checkpoint", "2"])
