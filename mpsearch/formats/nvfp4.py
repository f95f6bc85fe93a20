"""``nvfp4``: E2M1 elements in blocks of 16 along the input dimension, an FP8 E4M3 scale per block and a
float32 scale per tensor. Weights and (dynamically, emulated) activations: W4A4.

Recipe (all float32 unless said):
- tensor scale ``s_t = amax_tensor / (6 * 448)``;
- block scale ``bs = e4m3(min(amax_block / (6 * s_t), 448))`` (``torch.float8_e4m3fn`` cast: nearest even);
- effective scale ``eff = float(bs) * s_t``;
- element ``y = x / eff`` rounded to the E2M1 grid {0, 0.5, 1, 1.5, 2, 3, 4, 6} with ties to the even 3-bit
  magnitude code (0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4), saturating at 6;
- code = sign << 3 | magnitude code, the sign bit taken from x (so -0.0 and negatives that round to 0 keep it
  and dequantize to -0.0).
A block whose effective scale is 0 (all-zero block, block scale underflowing to 0 in E4M3, or a tensor whose
``s_t`` is 0, including one so small that ``s_t`` underflows in float32) gets magnitude codes 0.

Storage: ``qweight`` uint8 (out, in // 2), element 2k in the low nibble, 2k+1 in the high nibble;
``block_scale`` float8_e4m3fn (out, in // 16); ``tensor_scale`` float32 of shape (1,).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpsearch.errors import FormatError
from mpsearch.formats.base import Format, Packed, abs_max, check_finite, matrix_shape, records_grad, with_gradient_of
from mpsearch.formats.packing import decode_nibbles, pack_nibbles
from mpsearch.formats.registry import register_format

BLOCK = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
#: magnitude of each 3-bit code
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Midpoint between codes i and i+1. A tie goes to the even code: down after an even code (>), up after an
# odd one (>=). bucketize(right=False) counts boundaries < a; bucketize(right=True) counts boundaries <= a.
_MIDS_TIE_DOWN = (0.25, 1.25, 2.5, 5.0)  # between codes (0,1), (2,3), (4,5), (6,7)
_MIDS_TIE_UP = (0.75, 1.75, 3.5)  # between codes (1,2), (3,4), (5,6)

_cache: dict[tuple[str, str], torch.Tensor] = {}


def _const(key: str, values: Sequence[float], device: torch.device | str) -> torch.Tensor:
    k = (key, str(device))
    t = _cache.get(k)
    if t is None:
        t = _cache[k] = torch.tensor(values, dtype=torch.float32, device=device)
    return t


def e2m1_codes(a: torch.Tensor) -> torch.Tensor:
    """Magnitude codes (uint8 0..7) of non-negative float32 ``a``: nearest E2M1 value, ties to even, saturating.

    The grid has spacing 0.5 on [0, 2], 1 on [2, 4] and 2 on [4, 6], and its even codes are exactly the
    even multiples of the local spacing, so ``torch.round`` (half to even) of ``a / spacing`` in each range
    gives the tie-to-even-code rule. Plain arithmetic is much faster than a search on the grid.
    """
    lo = torch.round(a * 2.0)  # codes 0..4 for a <= 2 (values 0, 0.5, .., 2)
    mid = torch.round(a) + 2.0  # codes 4..6 for 2 <= a <= 4 (values 2, 3, 4)
    hi = torch.clamp(torch.round(a * 0.5), max=3.0) + 4.0  # codes 6..7 for a >= 4 (values 4, 6)
    code = torch.where(a < 1.75, lo, torch.where(a < 3.5, mid, hi))
    return code.clamp_(0, 7).to(torch.uint8)


def block_scales(x2: torch.Tensor, tensor_amax: torch.Tensor | float | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recipe's scales of a 2-D tensor: (x as float32 blocks (rows, cols // 16, 16), |x|, block scales
    float8_e4m3fn, tensor scale float32 (1,), effective scale per block float32, whether that scale is > 0)."""
    rows, cols = x2.shape
    x = x2.to(torch.float32).reshape(rows, cols // BLOCK, BLOCK)
    ax = x.abs()
    amax_b = ax.amax(dim=-1) if x.numel() else torch.zeros(rows, cols // BLOCK, device=x.device)
    amax_t = amax_b.max() if amax_b.numel() else torch.zeros((), device=x.device)
    if tensor_amax is not None:
        amax_t = torch.as_tensor(tensor_amax, dtype=torch.float32, device=x.device).reshape(())
    s_t = (amax_t / (E2M1_MAX * E4M3_MAX)).reshape(1)
    denom = E2M1_MAX * s_t
    live_t = denom > 0
    bs32 = amax_b / torch.where(live_t, denom, torch.ones_like(denom))
    bs32 = torch.where(live_t, bs32, torch.zeros_like(bs32)).clamp_(max=E4M3_MAX)
    bs8 = bs32.to(torch.float8_e4m3fn)
    eff = bs8.to(torch.float32) * s_t
    return x, ax, bs8, s_t, eff, eff > 0


def nvfp4_encode(x2: torch.Tensor, tensor_amax: torch.Tensor | float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a 2-D (rows, cols) tensor, cols % 16 == 0.

    ``tensor_amax`` replaces ``x2``'s own amax in the tensor scale: the rows of a larger tensor then get
    exactly the codes they get when the whole tensor is quantized.
    Returns (codes uint8 (rows, cols) with sign in bit 3, block scales float8_e4m3fn (rows, cols // 16),
    tensor scale float32 of shape (1,)).
    """
    rows, cols = x2.shape
    x, ax, bs8, s_t, eff, live = block_scales(x2, tensor_amax)
    y = ax / torch.where(live, eff, torch.ones_like(eff))[..., None]
    mag = e2m1_codes(y)
    mag = torch.where(live[..., None], mag, torch.zeros_like(mag))
    codes = mag | (torch.signbit(x).to(torch.uint8) << 3)
    return codes.reshape(rows, cols), bs8, s_t


def nvfp4_decode(codes: torch.Tensor, bs8: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
    """float32 (rows, cols) from codes (rows, cols), block scales (rows, cols // 16) and tensor scale (1,)."""
    rows, cols = codes.shape
    lut = _const("lut", E2M1_GRID + tuple(-v for v in E2M1_GRID), codes.device)  # -0.0 for code 8
    vals = lut[codes.to(torch.int64)].reshape(rows, cols // BLOCK, BLOCK)
    eff = bs8.to(torch.float32) * s_t.to(torch.float32)
    return (vals * eff[..., None]).reshape(rows, cols)


#: the signed value of each 4-bit code (sign in bit 3; code 8 is -0.0)
SIGNED_GRID = E2M1_GRID + tuple(-v for v in E2M1_GRID)


def nvfp4_decode_packed(qweight: torch.Tensor, bs8: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
    """``nvfp4_decode`` of packed codes (uint8 (rows, cols // 2)), without unpacking them first: each byte
    gives its two values through one table gather. Bit for bit ``nvfp4_decode(unpack_nibbles(qweight), ..)``."""
    rows, cols = qweight.shape[0], qweight.shape[1] * 2
    vals = decode_nibbles(qweight, SIGNED_GRID).reshape(rows, cols // BLOCK, BLOCK)
    eff = bs8.to(torch.float32) * s_t.to(torch.float32)
    return vals.mul_(eff[..., None]).reshape(rows, cols)


_EXP_1 = 127 << 23  # float32 exponent field of 1.0
_EXP_4 = 129 << 23  # ... of 4.0
_MAGIC = (22 << 23) | 0x400000  # added to an exponent field e: the bits of 1.5 * 2^(e - 127 + 22)


def round_e2m1(y: torch.Tensor) -> torch.Tensor:
    """Non-negative float32 ``y`` (overwritten) rounded onto the E2M1 grid, ties to the even code, saturating
    at 6. The grid's spacing is 0.5 below 2, 1 below 4 and 2 above, i.e. a quarter of y's power of two (at
    least 1's); adding and subtracting c = 1.5 * 2^22 * spacing rounds y to a multiple of the spacing by
    float32's own round-half-to-even (c's ulp is the spacing), and a multiple is even exactly when its code
    is. c's bits come from y's exponent field by three integer passes: nine passes in all where a rounding
    per range and selecting among them took fifteen."""
    c = torch.bitwise_and(y.view(torch.int32), 0x7F800000).clamp_(_EXP_1, _EXP_4).add_(_MAGIC).view(torch.float32)
    return y.add_(c).sub_(c).clamp_(max=E2M1_MAX)


def nvfp4_fake_quantize(x2: torch.Tensor, tensor_amax: torch.Tensor | float | None = None, *,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """float32 ``nvfp4_decode(*nvfp4_encode(x2, tensor_amax))`` computed without codes: the magnitude is
    rounded onto the E2M1 grid arithmetically (:func:`round_e2m1`), given x's sign and multiplied by the
    block's effective scale -- the same values as encode + decode, in a fraction of the passes over the
    activation. Bit for bit.
    ``out``: a contiguous float32 (rows, cols) tensor to write the result into (it may be ``x2`` itself)."""
    if records_grad(x2):  # a straight-through gradient (the rounding has none)
        with torch.no_grad():
            q = nvfp4_fake_quantize(x2, tensor_amax, out=out)
        return with_gradient_of(q, x2.to(q.dtype))
    rows, cols = x2.shape
    x, ax, _, _, eff, live = block_scales(x2, tensor_amax)
    y = ax.div_(torch.where(live, eff, torch.ones_like(eff))[..., None])  # |x| / eff, in place
    v = round_e2m1(y)
    # a block whose scale is 0 needs no masking: its finite values times eff = 0 are zeros with x's sign,
    # as the reference's zero codes with x's sign bit are
    if out is not None:
        torch.mul(v.copysign_(x), eff[..., None], out=out.view(rows, cols // BLOCK, BLOCK))
        return out
    return v.copysign_(x).mul_(eff[..., None]).reshape(rows, cols)


@register_format
class NVFP4(Format):
    """NVFP4 (W4A4): E2M1 values with a float8 scale per block of 16 and a float32 tensor scale, for weights
    and activations (see the module)."""

    name = "nvfp4"
    bits = 4.0
    quantizes_activations = True

    def why_ineligible(self, shape: Sequence[int]) -> str | None:
        """A reason unless the input dimension is a multiple of the block size (16)."""
        _, inp = matrix_shape(shape)
        if inp % BLOCK:
            return f"input dim {inp} is not a multiple of the block size {BLOCK}"
        return None

    def weight_bytes(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
        """Half a byte per element, a byte per block scale and 4 for the tensor scale (``dtype`` does not matter)."""
        self.check_eligible(shape)
        out, inp = matrix_shape(shape)
        return out * inp // 2 + out * inp // BLOCK + 4

    def quantize(self, w: torch.Tensor) -> Packed:
        """Codes (two per byte), block scales and tensor scale of ``w``; FormatError for NaN/inf or an
        ineligible shape."""
        self.check_eligible(w.shape)
        check_finite(w)
        out, inp = matrix_shape(w.shape)
        codes, bs8, s_t = nvfp4_encode(w.detach().reshape(out, inp))
        tensors = {"qweight": pack_nibbles(codes), "block_scale": bs8, "tensor_scale": s_t}
        return Packed(self.name, tuple(w.shape), w.dtype, tensors)

    def quantize_rows(self, w: torch.Tensor, rows: torch.Tensor) -> Packed:
        """Rows ``rows`` of ``w``'s matrix, packed as ``quantize(w)`` packs them (the whole tensor's scale)."""
        self.check_eligible(w.shape)
        out, inp = matrix_shape(w.shape)
        w2 = w.detach().reshape(out, inp)
        sub = w2[rows]
        check_finite(sub)
        amax = abs_max(w2) if w2.numel() else 0.0
        codes, bs8, s_t = nvfp4_encode(sub, amax)
        tensors = {"qweight": pack_nibbles(codes), "block_scale": bs8, "tensor_scale": s_t}
        return Packed(self.name, (len(rows), inp), w.dtype, tensors)

    def matmul_rows(self, x: torch.Tensor, packed: Packed, *, tensor_amax: torch.Tensor | float | None = None,
                    quantize_activations: bool | None = None,
                    dequantized: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of ``matmul(X, packed)`` for ``x`` = some rows of a larger activation ``X`` whose amax is
        ``tensor_amax`` (the tensor scale of NVFP4 activations is the whole activation's)."""
        act = self.quantizes_activations if quantize_activations is None else quantize_activations
        if not act or tensor_amax is None:
            return self.matmul(x, packed, quantize_activations=act, dequantized=dequantized)
        if x.shape[-1] % BLOCK:
            raise FormatError(f"nvfp4 activations need a last dim that is a multiple of {BLOCK}, got shape "
                              f"{tuple(x.shape)}; keep this layer's activations in 16 bits")
        xq = nvfp4_fake_quantize(x, tensor_amax).to(x.dtype)
        w = self.dequantize(packed) if dequantized is None else dequantized
        return xq @ w.reshape(w.shape[0], -1).to(x.dtype).t()

    def dequantize(self, packed: Packed) -> torch.Tensor:
        """The E2M1 values times their block and tensor scales, in the original shape and dtype."""
        if packed.format != self.name:
            raise FormatError(f"format 'nvfp4' was given a weight packed as {packed.format!r}; use that format")
        x = nvfp4_decode_packed(packed.tensors["qweight"], packed.tensors["block_scale"],
                                packed.tensors["tensor_scale"])
        return x.reshape(packed.shape).to(packed.dtype)

    def quantize_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize a (tokens, in) activation (leading dims flattened): tensor scale from its amax,
        blocks of 16 along the last dim. Returned in x's dtype."""
        if x.dim() < 1 or x.shape[-1] % BLOCK:
            raise FormatError(
                f"nvfp4 activations need a last dim that is a multiple of {BLOCK}, got shape {tuple(x.shape)}; "
                f"keep this layer's activations in 16 bits"
            )
        return nvfp4_fake_quantize(x.reshape(-1, x.shape[-1])).reshape(x.shape).to(x.dtype)
