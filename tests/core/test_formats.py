"""Number formats, checked against the spec in docs/design.md ("Number formats") and against independent reference
implementations written here (scalar loops over numpy float32 values and exact Fractions), not the module's
vectorized code."""

from __future__ import annotations

import math
from bisect import bisect_left
from fractions import Fraction

import numpy as np
import pytest
import torch

from mpsearch.errors import FormatError
from mpsearch.formats import Format, Packed, available_formats, get_format, matrix_shape, register_format

ALL = ["fp", "int8", "nvfp4", "int4", "int4-g64", "int4-g32"]
F32 = np.float32


def bits(t) -> np.ndarray:
    """float32 tensor/array -> int32 bit patterns, so comparisons see -0.0 and exact values."""
    a = t.detach().to(torch.float32).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)
    return np.ascontiguousarray(a).view(np.int32)


def assert_bits_equal(a, b):
    ba, bb = bits(a), bits(b)
    if not np.array_equal(ba, bb):
        fa = ba.view(np.float32)
        fb = bb.view(np.float32)
        idx = np.argwhere(ba != bb)[:5]
        details = [(tuple(i), float(fa[tuple(i)]), float(fb[tuple(i)])) for i in idx]
        raise AssertionError(f"{(ba != bb).sum()} elements differ, e.g. {details}")


# --------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------


def _e4m3_table() -> list[tuple[Fraction, int]]:
    """Every non-negative finite E4M3 (fn) value with its mantissa bits, ascending."""
    out = []
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue  # NaN
            v = Fraction(m, 8) * Fraction(2) ** -6 if e == 0 else (1 + Fraction(m, 8)) * Fraction(2) ** (e - 7)
            out.append((v, m))
    out.sort()
    return out


E4M3 = _e4m3_table()
E4M3_VALUES = [v for v, _ in E4M3]
assert E4M3_VALUES[-1] == 448


def ref_round_e4m3(v: Fraction) -> Fraction:
    """Nearest E4M3 value to v >= 0 (v <= 448), ties to the even mantissa."""
    i = bisect_left(E4M3_VALUES, v)
    if i < len(E4M3) and E4M3_VALUES[i] == v:
        return v
    lo, hi = E4M3[i - 1], E4M3[i]
    dl, dh = v - lo[0], hi[0] - v
    if dl < dh:
        return lo[0]
    if dh < dl:
        return hi[0]
    return lo[0] if lo[1] % 2 == 0 else hi[0]


E2M1 = [Fraction(0), Fraction(1, 2), Fraction(1), Fraction(3, 2), Fraction(2), Fraction(3), Fraction(4), Fraction(6)]


def ref_e2m1_code(y: Fraction) -> int:
    """Index (= magnitude code) of the nearest E2M1 value to y >= 0; ties to the even code; saturates at 6."""
    if y >= 6:
        return 7
    best = 0
    for i, g in enumerate(E2M1):
        d, db = abs(y - g), abs(y - E2M1[best])
        if d < db or (d == db and i % 2 == 0 and best % 2 == 1):
            best = i
    return best


def ref_nvfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized float32, codes) for a 2-D float32 array, following the spec text element by element."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    amax_t = F32(0)
    for x in w.flat:
        amax_t = max(amax_t, F32(abs(x)))
    s_t = F32(amax_t) / F32(6 * 448)
    out = np.zeros_like(w)
    codes = np.zeros(w.shape, dtype=np.uint8)
    for r in range(rows):
        for b in range(cols // 16):
            blk = w[r, 16 * b : 16 * b + 16]
            amax_b = F32(max(abs(F32(x)) for x in blk))
            if s_t == 0:
                bs = Fraction(0)
            else:
                ratio = F32(amax_b / (F32(6) * s_t))
                bs = ref_round_e4m3(Fraction(float(min(ratio, F32(448)))))
            eff = F32(float(bs)) * s_t
            for j, x in enumerate(blk):
                x = F32(x)
                mag = 0 if eff == 0 else ref_e2m1_code(Fraction(float(F32(abs(x)) / eff)))
                sign = bool(np.signbit(x))
                codes[r, 16 * b + j] = (8 if sign else 0) | mag
                v = F32(float(E2M1[mag])) * eff
                out[r, 16 * b + j] = -v if sign else v
    return out, codes


def ref_int4(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized float32, codes) for a 2-D float32 array, group by group."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    out = np.zeros_like(w)
    codes = np.zeros(w.shape, dtype=np.uint8)
    for r in range(rows):
        for g in range(cols // group):
            grp = [F32(x) for x in w[r, g * group : (g + 1) * group]]
            mn, mx = min(grp), max(grp)
            scale = F32(mx - mn) / F32(15)
            zero = mn + F32(8) * scale
            s16, z16 = F32(np.float16(scale)), F32(np.float16(zero))
            for j, x in enumerate(grp):
                if scale == 0:
                    q = 8
                else:
                    q = min(max(round(float(F32(x - mn) / scale)), 0), 15)  # Python round: half to even
                codes[r, g * group + j] = q
                out[r, g * group + j] = F32(F32(q - 8) * s16) + z16
    return out, codes


def ref_int8_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes int array, scale float32 per row), symmetric per row."""
    x = np.asarray(x, dtype=np.float32)
    q = np.zeros(x.shape, dtype=np.int64)
    scales = np.zeros(x.shape[0], dtype=np.float32)
    for r in range(x.shape[0]):
        amax = F32(max(abs(F32(v)) for v in x[r]))
        s = amax / F32(127)
        scales[r] = s
        for j, v in enumerate(x[r]):
            q[r, j] = 0 if s == 0 else min(max(round(float(F32(v) / s)), -127), 127)
    return q, scales


def ref_int8(w: np.ndarray) -> np.ndarray:
    q, s = ref_int8_rows(w)
    out = np.zeros(q.shape, dtype=np.float32)
    for r in range(q.shape[0]):
        for j in range(q.shape[1]):
            out[r, j] = F32(q[r, j]) * s[r]
    return out


def unpack_ref(qweight: torch.Tensor) -> np.ndarray:
    """Codes from a packed uint8 tensor, byte by byte: low nibble first."""
    b = qweight.numpy()
    out = np.zeros((b.shape[0], b.shape[1] * 2), dtype=np.uint8)
    for r in range(b.shape[0]):
        for k in range(b.shape[1]):
            out[r, 2 * k] = b[r, k] & 0xF
            out[r, 2 * k + 1] = b[r, k] >> 4
    return out


# --------------------------------------------------------------------------------------------------
# Inputs with ties
# --------------------------------------------------------------------------------------------------


def nvfp4_tie_weight(rng, rows=4, cols=64) -> torch.Tensor:
    """Tensor amax 2.625 (s_t = 2^-10); each block's amax 6 * 2^-10 * bs for an exact E4M3 bs, so every
    element is an exact grid point or midpoint (after scaling) times the block's effective scale."""
    steps = np.array([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6], dtype=np.float64)
    w = np.zeros((rows, cols), dtype=np.float32)
    for r in range(rows):
        for b in range(cols // 16):
            bs = float(rng.choice([448, 256, 128, 96, 40, 13, 1, 0.5, 2.0**-9]))
            eff = bs * 2.0**-10
            y = rng.choice(steps, 16) * rng.choice([-1, 1], 16)
            y[rng.integers(16)] = 6.0  # block amax = 6 * eff
            w[r, 16 * b : 16 * b + 16] = (y * eff).astype(np.float32)
    w[0, 0] = 2.625  # tensor amax, so s_t = 2^-10 exactly (2.625 = 6 * 448 * 2^-10)
    return torch.from_numpy(w)


def int4_tie_weight(rng, rows, cols, group) -> torch.Tensor:
    w = np.zeros((rows, cols), dtype=np.float32)
    for r in range(rows):
        for g in range(cols // group):
            s = 2.0 ** int(rng.integers(-8, 2))
            mn = s * int(rng.integers(-40, 40)) / 2
            k = rng.integers(0, 30, group) / 2  # multiples of 0.5: half of them are ties
            k[0], k[-1] = 0, 15
            w[r, g * group : (g + 1) * group] = mn + rng.permutation(k) * s
    return torch.from_numpy(w)


def int8_tie_weight(rng, rows, cols) -> torch.Tensor:
    w = np.zeros((rows, cols), dtype=np.float32)
    for r in range(rows):
        s = 2.0 ** int(rng.integers(-10, 4))
        k = rng.integers(-254, 255, cols) / 2
        k[rng.integers(cols)] = 127 * rng.choice([-1, 1])
        w[r] = k * s
    return torch.from_numpy(w)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_available_formats_order():
    assert available_formats() == ["fp", "int8", "nvfp4", "int4"]
    assert available_formats(variants=True) == ALL


def test_get_format_names_and_groups():
    for name in ALL:
        fmt = get_format(name)
        assert isinstance(fmt, Format) and fmt.name == name
    assert get_format("int4").group == 128
    assert get_format("int4-g64").group == 64
    assert get_format("int4-g32").group == 32
    assert get_format("int4", group=64) is get_format("int4-g64")
    assert get_format("int4", group=128) is get_format("int4")
    assert get_format("int4-g32", group=128) is get_format("int4")
    assert get_format(get_format("int8")) is get_format("int8")
    with pytest.raises(FormatError, match="group size 16"):
        get_format("int4", group=16)
    with pytest.raises(FormatError, match="no group"):
        get_format("nvfp4", group=64)


def test_get_format_group_of_a_format_without_family():
    """A format with a group size but no ``family`` (e.g. a plug-in) offers only its own group: asking for
    another is a one-line FormatError, not an AttributeError, and never returns an unrelated format."""
    int4 = get_format("int4")

    class Grouped(Format):
        name = "grouped-test"
        group = 128
        weight_bytes = int4.weight_bytes
        quantize = int4.quantize
        dequantize = int4.dequantize

    fmt = Grouped()
    assert get_format(fmt, group=128) is fmt
    with pytest.raises(FormatError, match=r"does not offer group size 64; expected one of 128$"):
        get_format(fmt, group=64)


def test_unknown_format_message():
    with pytest.raises(FormatError) as e:
        get_format("x")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("unknown format 'x'; expected one of ")
    for name in ["fp", "int8", "int4", "nvfp4"]:
        assert name in msg


def test_register_format_decorator_and_conflict():
    from mpsearch.formats import registry

    @register_format
    class Dummy(Format):
        name = "dummy-test"

        def weight_bytes(self, shape, dtype=torch.float32):
            return 0

        def quantize(self, w):
            return Packed(self.name, tuple(w.shape), w.dtype)

        def dequantize(self, packed):
            return torch.zeros(packed.shape, dtype=packed.dtype)

    try:
        assert isinstance(get_format("dummy-test"), Dummy)
        assert "dummy-test" in available_formats()

        class Other(Dummy):
            pass

        with pytest.raises(FormatError, match="already taken"):
            register_format(Other)
    finally:
        registry._REGISTRY.pop("dummy-test", None)
    assert "dummy-test" not in available_formats()


def test_reexports():
    assert matrix_shape((8, 3, 3, 3)) == (8, 27)
    assert Packed("fp", (1, 1), torch.float32, {"a": torch.zeros(3, dtype=torch.int8)}).nbytes == 3


def test_attributes():
    assert get_format("fp").quantizes_activations is False
    assert get_format("int8").quantizes_activations is True
    assert get_format("nvfp4").quantizes_activations is True
    for name in ["int4", "int4-g64", "int4-g32"]:
        assert get_format(name).quantizes_activations is False


# --------------------------------------------------------------------------------------------------
# NVFP4
# --------------------------------------------------------------------------------------------------


def test_nvfp4_worked_example():
    f = get_format("nvfp4")
    w = torch.zeros(2, 16)
    w[0, 0] = 2.625
    w[1, 0] = 0.75
    w[1, 1] = 0.3125
    p = f.quantize(w)
    assert p.tensors["tensor_scale"].shape == (1,)
    assert p.tensors["tensor_scale"].dtype == torch.float32
    assert p.tensors["tensor_scale"].item() == 2.0**-10
    assert p.tensors["block_scale"].dtype == torch.float8_e4m3fn
    assert p.tensors["block_scale"][1, 0].float().item() == 128.0
    assert p.tensors["block_scale"][0, 0].float().item() == 448.0
    d = f.dequantize(p)
    assert d[1, 1].item() == 0.25  # 0.3125 / 0.125 = 2.5, a tie, rounds to 2 -> 0.25
    assert d[1, 0].item() == 0.75
    assert d[0, 0].item() == 2.625
    codes = unpack_ref(p.tensors["qweight"])
    assert codes[1, 1] == 4  # 2.5 -> 2, code 4
    assert codes[1, 0] == 7  # 0.75 / 0.125 = 6, code 7
    assert codes[0, 0] == 7  # 2.625 / (448 * 2^-10) = 6

def _unit_block(vals) -> torch.Tensor:
    """Row 1 is a block of effective scale exactly 1 (s_t = 2^-8, block scale 256); row 0 sets the amax."""
    w = torch.zeros(2, 16)
    w[0, 0] = 10.5  # 6 * 448 * 2^-8
    w[1, : len(vals)] = torch.tensor(vals, dtype=torch.float32)
    return w


def test_nvfp4_e2m1_ties():
    f = get_format("nvfp4")
    vals = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, -6.0]
    p = f.quantize(_unit_block(vals))
    assert p.tensors["tensor_scale"].item() == 2.0**-8
    assert p.tensors["block_scale"][1, 0].float().item() == 256.0
    got = f.dequantize(p)[1].tolist()
    exp = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0]
    assert got == exp + [-v for v in exp]
    assert math.copysign(1, got[8]) == -1  # -0.25 -> -0.0


def test_nvfp4_grid_points_and_near_ties():
    f = get_format("nvfp4")
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    above = [0.2500001, 0.7500001, 1.2500001, 1.7500001, 2.5000002, 3.5000002, 5.0000005]
    w = _unit_block(grid + above + [6.0])
    d = f.dequantize(f.quantize(w))[1].tolist()
    assert d[:8] == grid
    assert d[8:15] == [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_nvfp4_saturation():
    f = get_format("nvfp4")
    # block amax 6.2 -> 6.2 / (6 * 2^-8) = 264.5 -> E4M3 rounds down to 256 -> effective scale 1: y = 6.2 > 6
    w = _unit_block([6.2, -6.2, 5.5, 5.9])
    p = f.quantize(w)
    assert p.tensors["block_scale"][1, 0].float().item() == 256.0
    assert f.dequantize(p)[1, :4].tolist() == [6.0, -6.0, 6.0, 6.0]
    codes = unpack_ref(p.tensors["qweight"])
    assert list(codes[1, :4]) == [7, 15, 7, 7]


def test_nvfp4_all_zero_block_and_tensor():
    f = get_format("nvfp4")
    w = torch.zeros(3, 32)
    w[0, :16] = torch.linspace(-1, 1, 16)
    p = f.quantize(w)
    assert p.tensors["block_scale"].float()[0].tolist() == [448.0, 0.0]
    assert p.tensors["block_scale"].float()[1:].abs().sum() == 0
    assert (p.tensors["qweight"][1:] == 0).all() and (p.tensors["qweight"][0, 8:] == 0).all()
    d = f.dequantize(p)
    assert torch.isfinite(d).all() and (d[1:] == 0).all()

    z = torch.zeros(4, 48)
    p = f.quantize(z)
    assert p.tensors["tensor_scale"].item() == 0.0
    assert (p.tensors["qweight"] == 0).all()
    assert (p.tensors["block_scale"].float() == 0).all()
    d = f.dequantize(p)
    assert torch.isfinite(d).all() and (d == 0).all()
    assert not torch.signbit(d).any()


def test_nvfp4_signed_zero():
    f = get_format("nvfp4")
    w = _unit_block([-0.0, -0.1, -0.25, 0.1, 0.0, 1.0, 6.0])
    p = f.quantize(w)
    codes = unpack_ref(p.tensors["qweight"])
    assert list(codes[1, :7]) == [8, 8, 8, 0, 0, 2, 7]
    d = f.dequantize(p)[1, :6]
    assert d.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert torch.signbit(d).tolist() == [True, True, True, False, False, False]
    # a zero tensor holding -0.0 keeps its sign bits
    z = torch.zeros(1, 16)
    z[0, 3] = -0.0
    p = f.quantize(z)
    assert unpack_ref(p.tensors["qweight"])[0, 3] == 8
    assert torch.signbit(f.dequantize(p)[0, 3])
    # a block whose scale underflows to 0 in E4M3 gives magnitude 0 and keeps the sign
    w = torch.zeros(2, 16)
    w[0, 0] = 2.625  # s_t = 2^-10; 1e-6 / (6 * 2^-10) = 1.7e-4 < 2^-10: E4M3 underflows to 0
    w[1, 0], w[1, 1] = -1e-6, 1e-6
    p = f.quantize(w)
    assert p.tensors["block_scale"][1, 0].float().item() == 0.0
    assert list(unpack_ref(p.tensors["qweight"])[1, :2]) == [8, 0]
    d = f.dequantize(p)
    assert d[1, 0].item() == 0 and torch.signbit(d[1, 0]) and not torch.signbit(d[1, 1])


def test_nvfp4_nibble_order():
    f = get_format("nvfp4")
    # unit block: element values 0.5 (code 1), 1 (code 2), -3 (code 8|5 = 13), 6 (code 7)
    w = _unit_block([0.5, 1.0, -3.0, 6.0])
    p = f.quantize(w)
    q = p.tensors["qweight"]
    assert q.dtype == torch.uint8 and q.shape == (2, 8)
    assert q[1, 0].item() == 0x21  # element 0 (code 1) low nibble, element 1 (code 2) high nibble
    assert q[1, 1].item() == 0x7D  # element 2 (code 13) low, element 3 (code 7) high
    assert q[0, 0].item() == 0x07  # 10.5 / (448 * 2^-8 = 1.75) = 6 -> code 7 in the low nibble


@pytest.mark.parametrize("seed", range(4))
def test_nvfp4_against_reference_ties(seed):
    rng = np.random.default_rng(seed)
    w = nvfp4_tie_weight(rng, rows=3, cols=64)
    f = get_format("nvfp4")
    p = f.quantize(w)
    ref, codes = ref_nvfp4(w.numpy())
    assert_bits_equal(f.dequantize(p), ref)
    assert np.array_equal(unpack_ref(p.tensors["qweight"]), codes)


@pytest.mark.parametrize("seed", range(4))
def test_nvfp4_against_reference_random(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 48, generator=g) * torch.rand(4, 1, generator=g) ** 4 * 10 ** (seed - 2)
    w[0, 5] = -0.0
    w[1, 16:32] *= 1e-5  # a block far below the tensor amax: tiny or underflowing block scale
    f = get_format("nvfp4")
    p = f.quantize(w)
    ref, codes = ref_nvfp4(w.numpy())
    assert_bits_equal(f.dequantize(p), ref)
    assert np.array_equal(unpack_ref(p.tensors["qweight"]), codes)


def test_nvfp4_activation():
    f = get_format("nvfp4")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 32, generator=g)
    xq = f.quantize_activation(x)
    assert xq.shape == x.shape and xq.dtype == x.dtype
    assert_bits_equal(xq, ref_nvfp4(x.numpy())[0])
    # leading dims are flattened into tokens; bf16 in -> bf16 out
    xb = x.to(torch.bfloat16).reshape(1, 5, 32)
    assert f.quantize_activation(xb).dtype == torch.bfloat16
    with pytest.raises(FormatError, match="multiple of 16"):
        f.quantize_activation(torch.randn(3, 20))
    w = torch.randn(7, 32, generator=g)
    p = f.quantize(w)
    assert torch.equal(f.matmul(x, p), xq @ f.dequantize(p).t())
    assert torch.equal(f.matmul(x, p, quantize_activations=False), x @ f.dequantize(p).t())


# --------------------------------------------------------------------------------------------------
# INT4
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,group", [("int4", 128), ("int4-g64", 64), ("int4-g32", 32)])
def test_int4_against_reference(name, group):
    f = get_format(name)
    rng = np.random.default_rng(group)
    g = torch.Generator().manual_seed(group)
    cases = [
        int4_tie_weight(rng, 3, 2 * group, group),
        torch.randn(3, 2 * group, generator=g) * 0.05,
        torch.randn(2, group, generator=g) * 300 + 17,
    ]
    c = torch.randn(2, group, generator=g)
    c[0] = 0.1  # a constant group
    c[1, : group // 2] = 1e-30  # tiny values next to normal ones
    cases.append(c)
    for w in cases:
        p = f.quantize(w)
        ref, codes = ref_int4(w.numpy(), group)
        assert_bits_equal(f.dequantize(p), ref)
        assert np.array_equal(unpack_ref(p.tensors["qweight"]), codes)


def test_int4_ties_round_half_even():
    f = get_format("int4-g32")
    # mn = 0, mx = 15 -> scale 1; 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 14.5 -> 14
    w = torch.zeros(1, 32)
    w[0, :6] = torch.tensor([0.0, 15.0, 0.5, 1.5, 2.5, 14.5])
    p = f.quantize(w)
    codes = unpack_ref(p.tensors["qweight"])[0, :6].tolist()
    assert codes == [0, 15, 0, 2, 2, 14]
    assert f.dequantize(p)[0, :6].tolist() == [0.0, 15.0, 0.0, 2.0, 2.0, 14.0]


def test_int4_constant_group_and_zero():
    f = get_format("int4-g32")
    w = torch.zeros(2, 64)
    w[0, 32:] = -3.25
    p = f.quantize(w)
    assert (unpack_ref(p.tensors["qweight"]) == 8).all()
    assert (p.tensors["scale"] == 0).all()
    d = f.dequantize(p)
    assert torch.isfinite(d).all() and torch.equal(d, w)


def test_int4_nibble_order():
    f = get_format("int4-g32")
    w = torch.zeros(1, 32)
    w[0, :16] = torch.arange(16, dtype=torch.float32) * 0.5 - 1  # mn -1, mx 6.5, scale 0.5: codes 0..15
    w[0, 16:] = -1
    p = f.quantize(w)
    q = p.tensors["qweight"]
    assert q.dtype == torch.uint8 and q.shape == (1, 16)
    assert q[0, :8].tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert torch.equal(f.dequantize(p), w)
    assert p.tensors["scale"].dtype == torch.float16 and p.tensors["scale"].shape == (1, 1)
    assert p.tensors["zero"].dtype == torch.float16 and p.tensors["zero"].item() == 3.0  # -1 + 8 * 0.5


def test_int4_overflow_error():
    for v in [1e30, 2e6]:  # scale = v / 15 overflows float16
        w = torch.zeros(2, 128)
        w[1, 3] = v
        with pytest.raises(FormatError, match="too large for int4's 16-bit scales"):
            get_format("int4").quantize(w)
    w = torch.full((2, 128), 7e4)  # a constant group: zero = 7e4 overflows float16
    with pytest.raises(FormatError, match="too large for int4's 16-bit scales"):
        get_format("int4").quantize(w)
    w = torch.zeros(2, 128)
    w[0, 0] = 7e4  # values above 65504 are fine while scale (4667) and zero (37333) fit in float16
    w[1, 0] = -7e4
    d = get_format("int4").fake_quantize(w)
    assert torch.isfinite(d).all() and (d - w).abs().max() < 4667 / 2 + 64


def test_int4_tiny_values():
    f = get_format("int4")
    for v in [1e-30, 1e-40]:  # 1e-40 is a float32 subnormal
        w = torch.full((2, 128), v)
        w[1, ::2] = -v
        d = f.fake_quantize(w)
        assert torch.isfinite(d).all()
        assert (d - w).abs().max() <= 2 * v  # float16 scales cannot hold these: they round to 0


# --------------------------------------------------------------------------------------------------
# INT8
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_int8_against_reference(seed):
    f = get_format("int8")
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    for w in [int8_tie_weight(rng, 5, 37), torch.randn(4, 50, generator=g) * 10 ** (seed - 1)]:
        w[-1] = 0  # an all-zero channel
        p = f.quantize(w)
        assert_bits_equal(f.dequantize(p), ref_int8(w.numpy()))
        q, s = ref_int8_rows(w.numpy())
        assert np.array_equal(p.tensors["qweight"].numpy(), q)
        assert_bits_equal(p.tensors["scale"], s)
        assert p.tensors["scale"][-1].item() == 0


def test_int8_ties_and_zero_channel():
    f = get_format("int8")
    w = torch.zeros(2, 6)
    w[0] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -2.5])  # scale exactly 1
    p = f.quantize(w)
    assert p.tensors["qweight"][0].tolist() == [127, 0, 2, 2, 0, -2]
    assert p.tensors["scale"].tolist() == [1.0, 0.0]
    assert p.tensors["qweight"][1].tolist() == [0] * 6
    assert p.tensors["qweight"].dtype == torch.int8 and p.tensors["scale"].dtype == torch.float32
    assert not torch.isnan(f.dequantize(p)).any()


def _int8_matmul_reference(x: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    qx, sx = ref_int8_rows(x.numpy())
    qw, sw = ref_int8_rows(w.numpy())
    acc = qx @ qw.T  # exact int64
    return acc.astype(np.float32) * (sx[:, None] * sw[None, :])


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (4, 1, 3), (1, 5, 1), (3, 17, 5), (33, 64, 9), (16, 96, 24), (6, 2500, 5)])
def test_int8_matmul_exact(m, k, n):
    f = get_format("int8")
    g = torch.Generator().manual_seed(m * k * n)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    x[0] = 0  # a zero token
    p = f.quantize(w)
    out = f.matmul(x, p)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert_bits_equal(out, _int8_matmul_reference(x, w))
    # without activation quantization: dequantized weight, activation as is
    assert torch.equal(f.matmul(x, p, quantize_activations=False), x @ f.dequantize(p).t())
    # quantize_activation is the per-token fake quantization
    qx, sx = ref_int8_rows(x.numpy())
    assert_bits_equal(f.quantize_activation(x), qx.astype(np.float32) * sx[:, None])


def test_int8_matmul_fallback_and_dtype(monkeypatch):
    f = get_format("int8")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 24, generator=g)
    w = torch.randn(6, 24, generator=g)
    p = f.quantize(w)
    expected = f.matmul(x, p)

    def broken(*a, **k):
        raise RuntimeError("_int_mm: unsupported shape")

    monkeypatch.setattr(torch, "_int_mm", broken)
    assert torch.equal(f.matmul(x, p), expected)
    p1 = f.quantize(w[:, :1])  # k == 1 through the fallback too
    assert torch.equal(f.matmul(x[:, :1], p1), torch.from_numpy(_int8_matmul_reference(x[:, :1], w[:, :1])))
    monkeypatch.undo()
    xb = x.to(torch.bfloat16)
    assert f.matmul(xb, p).dtype == torch.bfloat16
    assert f.quantize_activation(xb).dtype == torch.bfloat16
    with pytest.raises(FormatError, match="last dim is 24"):
        f.matmul(torch.randn(2, 23), p)


def test_int8_large_and_tiny():
    f = get_format("int8")
    for v in [1e30, 3e38, 1e-30, 1e-40]:
        w = torch.tensor([[v, -v / 3, v / 7, 0.0]])
        d = f.fake_quantize(w)
        assert torch.isfinite(d).all()
        assert d[0, 0].item() == pytest.approx(v, rel=1e-6, abs=1e-42)  # 1e-40 is subnormal
        assert ((d - w).abs() <= abs(v) / 127).all()


def test_nvfp4_large_and_tiny():
    f = get_format("nvfp4")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 32, generator=g)
    for v in [1e30, 3e38, 1e-30]:
        w = base / base.abs().max() * v
        d = f.fake_quantize(w)
        assert torch.isfinite(d).all()
        # relative to each block's amax, E2M1 with an E4M3 scale is within 25% (half the top grid step)
        blk = w.reshape(2, 2, 16).abs().amax(-1, keepdim=True)
        assert ((d - w).reshape(2, 2, 16).abs() <= blk * 0.25).all()
        assert_bits_equal(d, ref_nvfp4(w.numpy())[0])
    w = torch.full((1, 16), 1e-40)  # subnormal: s_t may lose precision but nothing blows up
    d = f.fake_quantize(w)
    assert torch.isfinite(d).all() and (d - w).abs().max() <= 1e-40


# --------------------------------------------------------------------------------------------------
# Common contract
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_raises(name, bad):
    w = torch.zeros(4, 128)
    w[2, 7] = bad
    with pytest.raises(FormatError) as e:
        get_format(name).quantize(w)
    assert "NaN/inf" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name,shape,reason",
    [
        ("int4", (8, 36), "input dim 36 is not a multiple of the group size 128"),
        ("int4", (8, 3, 3, 3), "input dim 27 is not a multiple of the group size 128"),
        ("int4-g64", (8, 96), "input dim 96 is not a multiple of the group size 64"),
        ("int4-g32", (8, 48), "input dim 48 is not a multiple of the group size 32"),
        ("nvfp4", (8, 24), "input dim 24 is not a multiple of the block size 16"),
        ("nvfp4", (8, 4, 1, 1), "input dim 4 is not a multiple of the block size 16"),
    ],
)
def test_ineligible(name, shape, reason):
    f = get_format(name)
    assert not f.eligible(shape)
    assert f.why_ineligible(shape) == reason
    with pytest.raises(FormatError, match=reason):
        f.quantize(torch.randn(shape))
    with pytest.raises(FormatError, match=reason):
        f.weight_bytes(shape)


@pytest.mark.parametrize("name", ALL)
def test_one_dim_weight_is_an_error(name):
    with pytest.raises(FormatError, match="2 or more dimensions"):
        get_format(name).quantize(torch.randn(16))


def test_every_shape_eligible_for_fp_and_int8():
    for shape in [(1, 1), (3, 5), (7, 3, 3, 3), (2, 1, 1, 1)]:
        assert get_format("fp").eligible(shape) and get_format("int8").eligible(shape)


SHAPES = [(1, 128), (3, 256), (16, 384), (5, 64, 1, 1), (4, 32, 3, 3), (2, 16, 2, 2), (7, 16), (9, 48), (1, 1), (3, 5, 3, 3)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("name", ALL)
def test_weight_bytes_equals_packed_nbytes(name):
    f = get_format(name)
    checked = 0
    for shape in SHAPES:
        if not f.eligible(shape):
            continue
        for dtype in DTYPES:
            w = torch.randn(shape).to(dtype)
            assert f.weight_bytes(shape, dtype) == f.quantize(w).nbytes, (shape, dtype)
            checked += 1
    assert checked >= 6


def test_weight_bytes_formulas():
    assert get_format("fp").weight_bytes((10, 20), torch.bfloat16) == 400
    assert get_format("fp").weight_bytes((10, 20)) == 800
    assert get_format("int8").weight_bytes((10, 20)) == 200 + 40
    assert get_format("int4").weight_bytes((10, 256)) == 1280 + 4 * 10 * 2
    assert get_format("int4-g32").weight_bytes((10, 256)) == 1280 + 4 * 10 * 8
    assert get_format("nvfp4").weight_bytes((10, 256)) == 1280 + 160 + 4
    assert get_format("nvfp4").weight_bytes((10, 16, 3, 3)) == 720 + 90 + 4


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_shape_dtype_and_conv(name, dtype):
    f = get_format(name)
    g = torch.Generator().manual_seed(3)
    for shape in [(6, 128), (4, 32, 2, 2)]:
        w = (torch.randn(shape, generator=g) * 0.1).to(dtype)
        d = f.dequantize(f.quantize(w))
        assert d.shape == w.shape and d.dtype == w.dtype
        assert torch.isfinite(d).all()
        # a conv weight is the matrix (out, in*kh*kw)
        flat = f.fake_quantize(w.reshape(shape[0], -1))
        assert torch.equal(d.reshape(shape[0], -1), flat)
        if name != "fp":
            matrix_cols = math.prod(shape[1:])
            assert f.quantize(w).tensors["qweight"].shape[0] == shape[0]
            assert f.quantize(w).tensors["qweight"].shape[1] in (matrix_cols, matrix_cols // 2)


def test_fp_is_bit_identical():
    f = get_format("fp")
    w = torch.randn(4, 3, 3, 3).to(torch.bfloat16)
    w[0, 0, 0, 0] = -0.0
    p = f.quantize(w)
    assert p.tensors["weight"].data_ptr() == w.data_ptr()
    d = f.dequantize(p)
    assert d.dtype == torch.bfloat16 and torch.equal(d.view(torch.int16), w.view(torch.int16))
    assert f.quantize_activation(w) is w
    x = torch.randn(2, 27).to(torch.bfloat16)
    assert torch.equal(f.matmul(x, p), x @ w.reshape(4, -1).t())


@pytest.mark.parametrize("name", ["int8", "nvfp4", "int4", "fp"])
def test_dequantize_rejects_foreign_packed(name):
    other = "int8" if name != "int8" else "nvfp4"
    p = get_format(other).quantize(torch.randn(4, 128))
    with pytest.raises(FormatError, match=f"packed as '{other}'"):
        get_format(name).dequantize(p)


def test_quantize_does_not_touch_input_and_works_on_params():
    w = torch.nn.Parameter(torch.randn(8, 128))
    before = w.detach().clone()
    for name in ALL:
        get_format(name).fake_quantize(w)
    assert torch.equal(w.detach(), before)


def test_large_weight_matches_the_element_by_element_reference():
    """A 2M-element weight through every format gives, on the rows checked, the same bits as the spec-text
    references above (per channel, per group, per block: rows are independent, and row 0 holds the tensor's
    amax so that NVFP4's tensor scale is the same for the slice)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1024, 2048, generator=g) * torch.rand(1024, 1, generator=g)
    w[0, 1000] = 7.5  # the tensor's amax
    w[517, :300] *= 1e-4  # a row with tiny blocks next to normal ones
    rows = [0, 517, 1023]
    refs = {"fp": lambda x: x, "int8": ref_int8, "nvfp4": lambda x: ref_nvfp4(x)[0],
            "int4": lambda x: ref_int4(x, 128)[0], "int4-g64": lambda x: ref_int4(x, 64)[0],
            "int4-g32": lambda x: ref_int4(x, 32)[0]}
    assert set(refs) == set(ALL)
    for name in ALL:
        d = get_format(name).fake_quantize(w)
        assert d.shape == w.shape and d.dtype == w.dtype
        assert_bits_equal(d[rows], refs[name](w[rows].numpy()))


@pytest.mark.parametrize("kernel,padding,stride,dilation", [((3, 3), (1, 1), (1, 1), (1, 1)),
                                                            ((3, 3), (1, 1), (2, 2), (1, 1)),
                                                            ((1, 1), (0, 0), (1, 1), (1, 1)),
                                                            ((3, 2), (2, 0), (1, 2), (2, 1))])
def test_int8_conv_patches_exact(kernel, padding, stride, dilation):
    """The int8 conv path (no float im2col copy, patch amax by max-pooling) is bit for bit the W8A8 matmul of
    the im2col rows, checked against the numpy reference on F.unfold's patches."""
    f = get_format("int8")
    g = torch.Generator().manual_seed(sum(kernel) + padding[0] + stride[1])
    x = torch.randn(2, 7, 9, 10, generator=g)
    x[0, :, :4, :] = 0  # zero patches: scale 0, codes 0
    w = torch.randn(5, 7, *kernel, generator=g)
    p = f.quantize(w)
    got, oh, ow = f.matmul_patches(x, p, kernel, dilation, padding, stride)
    cols = torch.nn.functional.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    cols = cols.transpose(1, 2).reshape(-1, w[0].numel())
    assert cols.shape[0] == 2 * oh * ow
    assert_bits_equal(got, _int8_matmul_reference(cols, w.reshape(5, -1)))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)  # -0.0 and +0.0 differ here


def _nasty_rows(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 64, generator=g) * torch.logspace(-30, 3, 24)[:, None]
    x[0] = 0.0  # an all-zero row (blocks of zeros)
    x[1] = -0.0
    x[2, :16] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.25, -0.75, -1.25, -1.75, -2.5,
                              -3.5, -5.0, -7.0])  # E2M1 ties and saturation at a block amax of 7
    x[3, :16] = x[2, :16] * 2.0 ** -100  # the same values where the block scale underflows
    return x


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("amax", [None, "row", 1e-40, 1e30])
def test_nvfp4_fake_quantize_is_encode_then_decode(seed, amax):
    from mpsearch.formats.nvfp4 import nvfp4_decode, nvfp4_encode, nvfp4_fake_quantize

    x = _nasty_rows(seed)
    ta = None if amax is None else (x.abs().amax() * 3 if amax == "row" else torch.tensor(amax))
    want = nvfp4_decode(*nvfp4_encode(x, ta))
    assert torch.equal(_bits(nvfp4_fake_quantize(x, ta)), _bits(want))


def test_e2m1_rounding_by_magic_constant_is_the_code_grid():
    # every 97th float32 bit pattern in [0, 8], the ties, and magnitudes far above the grid: the same values
    # as encoding to the nearest code (ties to the even code) and decoding
    from mpsearch.formats.nvfp4 import E2M1_GRID, e2m1_codes, round_e2m1

    y = torch.cat((torch.arange(0, 0x41000000, 97, dtype=torch.int32).view(torch.float32),
                   torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 8.0, 1e30, 3.4e38, 1e-45])))
    want = torch.tensor(E2M1_GRID)[e2m1_codes(y).long()]
    assert torch.equal(round_e2m1(y.clone()), want)


@pytest.mark.parametrize("name", ["nvfp4", "int4", "int4-g32"])
def test_packed_decode_equals_unpacked_reference(name):
    # the table-gather decode gives the bits of unpack + elementwise arithmetic
    from mpsearch.formats.nvfp4 import nvfp4_decode
    from mpsearch.formats.packing import unpack_nibbles

    w = _nasty_rows(7)
    w[0, 0] = 1.0  # int4 needs finite float16 scales: keep the range moderate
    w = torch.cat((w, -0.5 * w), dim=1).clamp(-1e4, 1e4)  # 128 inputs: one int4 group per row
    fmt = get_format(name)
    p = fmt.quantize(w)
    codes = unpack_nibbles(p.tensors["qweight"])
    if name == "nvfp4":
        want = nvfp4_decode(codes, p.tensors["block_scale"], p.tensors["tensor_scale"])
    else:
        g = fmt.group
        q = codes.reshape(w.shape[0], -1, g).to(torch.float32)
        want = ((q - 8) * p.tensors["scale"].float()[..., None] + p.tensors["zero"].float()[..., None]).reshape(w.shape)
    assert torch.equal(_bits(fmt.dequantize(p)), _bits(want))


def test_decoding_a_word_at_a_time_is_decode_nibbles():
    from mpsearch.formats.nvfp4 import SIGNED_GRID
    from mpsearch.formats.packing import decode_nibbles, decode_words_into

    q = torch.randint(0, 256, (5, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    q[0] = torch.arange(8, dtype=torch.uint8) * 37  # codes with the sign bit set in both nibbles
    q[1, :2] = 0x88  # -0.0 codes
    out = torch.full((5, 16), float("nan"))
    idx = torch.empty(20, dtype=torch.int32)
    want = decode_nibbles(q, SIGNED_GRID)
    got = decode_words_into(q, out, SIGNED_GRID, idx)
    assert got is out and torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())
