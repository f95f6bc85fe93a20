"""The weights digest: the BLAKE3 default scheme, the SHA-256 schemes that earlier profiles and plans recorded
(still checked in their own scheme), and what each one notices."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import mpsearch
from mpsearch.errors import ModelError
from mpsearch.models import describe, get_denoiser, same_weights, weights_digest
from mpsearch.profiling.store import stored_weights
from mpsearch.workflow import profile


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


def test_the_old_scheme_is_bit_for_bit_the_old_digest_and_the_default_differs(dit_pipe):
    old = weights_digest(dit_pipe, scheme="sha256")
    assert old == _single_stream(dit_pipe)
    threaded = weights_digest(dit_pipe, scheme="sha256t")
    new = weights_digest(dit_pipe)
    assert new.startswith("blake3:") and len(new) == len("blake3:") + 24 and new not in (old, threaded)
    assert threaded.startswith("sha256t:") and weights_digest(dit_pipe, scheme="sha256t") == threaded
    assert weights_digest(dit_pipe) == new  # deterministic, whatever the threads' order
    for d in (old, threaded, new):
        assert same_weights(d, dit_pipe) == (True, d)


def test_the_default_is_blake3_over_the_layers_headers_and_bytes(dit_pipe):
    import blake3

    assert weights_digest(dit_pipe) == _single_stream(dit_pipe, blake3.blake3(), "blake3")


@pytest.mark.parametrize("change", ["value", "dtype"])
def test_any_changed_weight_changes_every_digest(dit_pipe, change):
    den = get_denoiser(dit_pipe)
    before = {s: weights_digest(dit_pipe, scheme=s) for s in ("blake3", "sha256t", "sha256")}
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


def test_a_profile_and_plan_recorded_in_the_old_scheme_still_resume_and_apply(dit_pipe, tmp_path):
    import sqlite3

    out = tmp_path / "p.sqlite"
    kw = dict(steps=1, seeds=(0, 1), labels=(1,), progress=False)
    prof = profile(dit_pipe, out=out, shard=(0, 2), **kw)  # one of two units
    old = weights_digest(dit_pipe, scheme="sha256")
    with sqlite3.connect(out) as conn:  # as an earlier mpsearch recorded it
        conn.execute("UPDATE meta SET value = ? WHERE key = 'weights'", (json.dumps(old),))
    assert stored_weights(out) == old
    prof = profile(dit_pipe, out=out, **kw)  # resumes: the other unit, digest checked in the old scheme
    assert prof.weights == old and stored_weights(out) == old
    plan = mpsearch.solve(prof, "50%", role_pins={})
    assert plan.weights == old
    with mpsearch.apply_plan(dit_pipe, plan):  # checked in its own scheme: the same weights
        pass
