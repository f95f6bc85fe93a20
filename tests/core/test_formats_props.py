"""Property tests (hypothesis) for the number formats: error bounds and packing round trips."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpsearch.formats import get_format
from mpsearch.formats.packing import pack_nibbles, unpack_nibbles

SETTINGS = settings(max_examples=60, deadline=None)

# normal float32 values (no subnormals), with exact zeros, repeated values and ties likely in the mix
finite32 = st.floats(-1e6, 1e6, width=32, allow_subnormal=False)


def matrices(cols_multiple: int, max_groups: int = 3, elements=finite32):
    return st.tuples(st.integers(1, 4), st.integers(1, max_groups)).flatmap(
        lambda rc: hnp.arrays(np.float32, (rc[0], rc[1] * cols_multiple), elements=elements)
    )


def scaled(arr: np.ndarray, exp: int) -> torch.Tensor:
    return torch.from_numpy(arr * np.float32(2.0**exp))


@SETTINGS
@given(matrices(1, max_groups=40), st.integers(-60, 60))
def test_int8_error_within_half_scale(arr, exp):
    w = scaled(arr, exp)
    f = get_format("int8")
    p = f.quantize(w)
    scale = p.tensors["scale"][:, None].double()
    err = (f.dequantize(p).double() - w.double()).abs()
    # half a step, plus float32 rounding of w/scale and q*scale (relative 2^-24 each on values <= 127.5)
    assert (err <= scale * (0.5 + 2.0**-15) + 1e-37).all()
    q = p.tensors["qweight"]
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127


@SETTINGS
@given(st.sampled_from([("int4-g32", 32), ("int4-g64", 64)]), st.data())
def test_int4_error_within_half_scale_plus_fp16(fmt_group, data):
    name, g = fmt_group
    arr = data.draw(matrices(g, max_groups=2, elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False)))
    w = torch.from_numpy(arr)
    f = get_format(name)
    p = f.quantize(w)
    out, inp = w.shape
    x = w.reshape(out, inp // g, g).double()
    wf = w.reshape(out, inp // g, g)
    mn, mx = wf.amin(-1), wf.amax(-1)
    scale32 = ((mx - mn) / 15).double()
    zero32 = (mn + 8 * ((mx - mn) / 15)).double()
    s16 = p.tensors["scale"].double()
    z16 = p.tensors["zero"].double()
    assert torch.equal(s16, scale32.to(torch.float16).double())
    fp16_err = 8 * (scale32 - s16).abs() + (zero32 - z16).abs()
    err = (f.dequantize(p).reshape(out, inp // g, g).double() - x).abs()
    slack = 2.0**-20 * (scale32 + x.abs().amax(-1))  # float32 rounding in q and in the reconstruction
    assert (err <= (scale32 / 2 + fp16_err + slack)[..., None]).all()
    codes = unpack_nibbles(p.tensors["qweight"])
    assert int(codes.max()) <= 15


HALF_SPACING = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0], dtype=torch.float64)


@SETTINGS
@given(matrices(16, max_groups=3), st.integers(-60, 60))
def test_nvfp4_error_within_half_grid_spacing(arr, exp):
    w = scaled(arr, exp)
    f = get_format("nvfp4")
    p = f.quantize(w)
    out, inp = w.shape
    nb = inp // 16
    s_t = p.tensors["tensor_scale"].double()
    eff = (p.tensors["block_scale"].double() * s_t)[..., None]  # exact product in float64
    x = w.double().reshape(out, nb, 16)
    d = f.dequantize(p).double().reshape(out, nb, 16)
    err = (d - x).abs()
    y = x.abs() / torch.where(eff > 0, eff, torch.ones_like(eff))
    # spacing of the interval y falls in: [0,2) 0.5, [2,4) 1, [4,6] 2
    idx = torch.bucketize(y, torch.tensor([0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float64), right=True).clamp(max=7)
    half = HALF_SPACING[idx]
    tol = 2.0**-20 * x.abs() + 1e-38
    sat = y > 6
    live = (eff > 0).expand_as(x)
    ok_inside = err <= half * eff + tol
    ok_sat = (d.abs() - 6 * eff).abs() <= tol  # saturated: exactly +-6 * eff
    assert (ok_inside | ~live | sat).all()
    assert (ok_sat | ~(live & sat)).all()
    # the block scale is amax_block / (6 * s_t) rounded to E4M3: within half an E4M3 step (relative 2^-4 for
    # normals, absolute 2^-10 below 2^-6), so saturation (y > 6) only comes from that rounding down
    if s_t.item() > 0:
        ratio = (x.abs().amax(-1) / (6 * s_t)).clamp(max=448)
        bs = p.tensors["block_scale"].double()
        assert ((bs - ratio).abs() <= torch.maximum(ratio * 2.0**-4, torch.full_like(ratio, 2.0**-10)) * (1 + 2.0**-16)).all()
    # blocks with no scale hold only values too small for E4M3 (or a zero tensor) and decode to +-0
    dead = ~(eff > 0).squeeze(-1)
    if dead.any():
        amax_b = x.abs().amax(-1)
        assert (d[dead] == 0).all()
        assert (amax_b[dead] <= 6 * s_t * 2.0**-10 * (1 + 2.0**-16) + 1e-38).all()  # E4M3 underflow
    # the sign bit follows x, zeros included
    signs = (unpack_nibbles(p.tensors["qweight"]) >> 3).bool()
    assert torch.equal(signs, torch.signbit(w))


@SETTINGS
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 20).map(lambda n: 2 * n)), elements=st.integers(0, 15)))
def test_nibble_pack_round_trip(codes):
    c = torch.from_numpy(codes)
    packed = pack_nibbles(c)
    assert packed.dtype == torch.uint8 and packed.shape == (c.shape[0], c.shape[1] // 2)
    assert torch.equal(packed & 0xF, c[:, 0::2]) and torch.equal(packed >> 4, c[:, 1::2])
    assert torch.equal(unpack_nibbles(packed), c)


@SETTINGS
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 20)), elements=st.integers(0, 255)))
def test_nibble_unpack_round_trip(packed):
    p = torch.from_numpy(packed)
    assert torch.equal(pack_nibbles(unpack_nibbles(p)), p)


@SETTINGS
@given(
    st.sampled_from(["int8", "nvfp4", "int4-g32", "fp"]),
    matrices(32, max_groups=2, elements=st.floats(-1e4, 1e4, width=32)),
)
def test_packed_round_trip_through_bytes(name, arr):
    """Packed tensors are all the state: rebuilding them from their raw bytes gives the same weight."""
    from mpsearch.formats import Packed

    f = get_format(name)
    w = torch.from_numpy(arr)
    p = f.quantize(w)
    copy = {}
    for k, t in p.tensors.items():
        raw = t.contiguous().view(torch.uint8).clone()
        copy[k] = raw.view(t.dtype).reshape(t.shape)
    p2 = Packed(p.format, p.shape, p.dtype, copy)
    assert p2.nbytes == p.nbytes == f.weight_bytes(w.shape, w.dtype)
    a, b = f.dequantize(p), f.dequantize(p2)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@SETTINGS
@given(matrices(1, max_groups=24), matrices(1, max_groups=24))
def test_int8_matmul_matches_integer_reference(xa, wa):
    k = min(xa.shape[1], wa.shape[1])
    x = torch.from_numpy(np.ascontiguousarray(xa[:, :k]))
    w = torch.from_numpy(np.ascontiguousarray(wa[:, :k]))
    f = get_format("int8")
    p = f.quantize(w)
    xq = f.quantize(x)  # same per-row recipe as the activations
    acc = xq.tensors["qweight"].long() @ p.tensors["qweight"].long().t()
    ref = acc.float() * (xq.tensors["scale"][:, None] * p.tensors["scale"][None, :])
    assert torch.equal(f.matmul(x, p).view(torch.int32), ref.view(torch.int32))
