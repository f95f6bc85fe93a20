"""The weights digest: the BLAKE3 scheme, what it notices, and the one error for the retired SHA-256 schemes
that unreleased development versions recorded in profiles and plans."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import mpsearch
from mpsearch.apps.profile import profile
from mpsearch.errors import ModelError
from mpsearch.models import describe, get_denoiser, same_weights, weights_digest
from mpsearch.profiling.store import stored_weights


def _single_stream(pipe, h=None, prefix: str = "sha256") -> str:
    """The digest as mpsearch 0.1 computed it (sha256 over every layer's header and bytes, in layer order),
    or with the hasher ``h`` instead."""
    den = get_denoiser(pipe)
    modules = dict(den.named_modules())
    h = hashlib.sha256() if h is None else h
    for name in describe(den).names:
        w = modules[name].weight.detach()
        h.update(json.dumps([name, str(w.dtype), list(w.shape)]).encode())
        h.update(w.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return f"{prefix}:" + h.hexdigest()[:24]


def test_the_digest_is_deterministic_and_checks_itself(dit_pipe):
    new = weights_digest(dit_pipe)
    assert new.startswith("blake3:") and len(new) == len("blake3:") + 24
    assert new != _single_stream(dit_pipe)  # not the retired sha256 stream
    assert weights_digest(dit_pipe) == new
    assert same_weights(new, dit_pipe) == (True, new)


@pytest.mark.parametrize("scheme", ["sha256", "sha256t"])
def test_a_retired_scheme_is_one_error_that_says_to_regenerate(dit_pipe, scheme):
    for call in (lambda: weights_digest(dit_pipe, scheme=scheme), lambda: same_weights(f"{scheme}:abc", dit_pipe)):
        with pytest.raises(ModelError, match=f"retired scheme '{scheme}'.*regenerate") as e:
            call()
        assert "\n" not in str(e.value)


def test_the_default_is_blake3_over_the_layers_headers_and_bytes(dit_pipe):
    import blake3

    assert weights_digest(dit_pipe) == _single_stream(dit_pipe, blake3.blake3(), "blake3")


@pytest.mark.parametrize("change", ["value", "dtype"])
def test_any_changed_weight_changes_every_digest(dit_pipe, change):
    den = get_denoiser(dit_pipe)
    before = {s: weights_digest(dit_pipe, scheme=s) for s in ("blake3",)}
    name = describe(den).names[-1]
    layer = dict(den.named_modules())[name]
    saved = layer.weight.data
    try:
        if change == "value":
            layer.weight.data = saved.clone()
            layer.weight.data.view(-1)[7] += 1e-6
        else:
            layer.weight.data = saved.double()
        for scheme, digest in before.items():
            assert same_weights(digest, dit_pipe)[0] is False, scheme
    finally:
        layer.weight.data = saved
    assert all(same_weights(d, dit_pipe)[0] for d in before.values())


def test_an_unknown_scheme_is_a_one_line_error(dit_pipe):
    with pytest.raises(ModelError, match="unknown weights digest scheme 'md7'.*upgrade mpsearch"):
        same_weights("md7:abc", dit_pipe)


def test_a_profile_and_plan_recorded_in_a_retired_scheme_are_one_error(dit_pipe, tmp_path):
    import sqlite3

    from mpsearch.errors import PlanError

    out = tmp_path / "p.sqlite"
    kw = dict(steps=1, seeds=(0, 1), labels=(1,), progress=False)
    profile(dit_pipe, out=out, shard=(0, 2), **kw)  # one of two units
    old = _single_stream(dit_pipe)  # as an earlier development version recorded it
    with sqlite3.connect(out) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'weights'", (json.dumps(old),))
    assert stored_weights(out) == old
    with pytest.raises(ModelError, match="retired scheme 'sha256'.*regenerate the profile"):
        profile(dit_pipe, out=out, **kw)  # resuming it
    plan = mpsearch.Plan.uniform(dit_pipe, "int8")
    plan.weights = old
    with pytest.raises(PlanError, match="retired scheme 'sha256'.*regenerate") as e:
        mpsearch.apply_plan(dit_pipe, plan)
    assert "\n" not in str(e.value)
