"""``clip``: activation-weighted scale search, one clip ratio per scale group.

Notation: W (out, in_cols) float32 = w.reshape(out, -1); h = calib.x2 (mean of x_j**2 over the calibration rows).

For every scale group (int8: a row; nvfp4: a block of 16 inputs in a row; int4: a group of G inputs in a row) the
clip ratio r is chosen from :data:`CLIP_GRID` to minimize the group's activation-weighted error
``sum_j h_j (W_ij - Q_ij)^2`` (float64 sums of the float32 terms), Q the decoded codes of that group under r.
Ties go to the larger r, so r = 1 (round-to-nearest) wins ties and the result is never worse than RTN on this
objective. The scales of a group clipped by r:

- int8: ``scale = (r * amax_row) / 127``;
- nvfp4: ``block_scale = e4m3(min((r * amax_block) / (6 * s_t), 448))``, the tensor scale s_t unchanged (from the
  whole tensor's amax, as RTN);
- int4: ``mn' = r * mn``, ``mx' = r * mx``, then the format's recipe on them: ``scale = (mx' - mn') / 15``,
  ``zero = mn' + 8 * scale`` (stored float16), ``q = clamp(round((x - mn') / scale), 0, 15)`` (8 where scale is 0).

Codes are the format's own rounding with those scales, so r = 1 gives exactly ``fmt.quantize(w)``'s codes and
scales. The search runs over the 11 ratios, each vectorized over all groups.
"""

from __future__ import annotations

import torch

from mpsearch.errors import FormatError
from mpsearch.formats import Format, Packed, matrix_shape
from mpsearch.formats.base import amin_amax
from mpsearch.formats.int8 import row_scales
from mpsearch.formats.nvfp4 import E2M1_MAX, E4M3_MAX, round_e2m1
from mpsearch.quantizers.codes import decode, encode, group_of, kind_of, pack_codes

CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def _int8(x3: torch.Tensor, r: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    mn, mx = amin_amax(x3, -1)
    scale = row_scales(torch.maximum(mx, -mn).abs_() * r)  # (out, 1)
    codes = encode("int8", x3, scale[..., None], None)
    return codes, decode("int8", codes, scale[..., None], None), {"scale": scale}


def _nvfp4(x3: torch.Tensor, r: float | torch.Tensor, s_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                     dict[str, torch.Tensor]]:
    # the ops of nvfp4.block_scales with amax_block scaled by r (r = 1: the same bits)
    amax_b = x3.abs().amax(dim=-1) * r
    denom = E2M1_MAX * s_t
    live_t = denom > 0
    bs32 = amax_b / torch.where(live_t, denom, torch.ones_like(denom))
    bs32 = torch.where(live_t, bs32, torch.zeros_like(bs32)).clamp_(max=E4M3_MAX)
    bs = bs32.to(torch.float8_e4m3fn).to(torch.float32)  # e4m3 values, exact in float32
    eff = (bs * s_t)[..., None]
    codes = encode("nvfp4", x3, eff, None)
    return codes, decode("nvfp4", codes, eff, None), {"block_scale": bs}


def _int4(x3: torch.Tensor, r: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    # the ops of Int4.quantize on (r * mn, r * mx) (r = 1: the same bits)
    mn, mx = torch.aminmax(x3, dim=-1)
    mn, mx = mn * r, mx * r
    scale = (mx - mn) / 15
    zero = mn + 8 * scale
    scale16, zero16 = scale.to(torch.float16), zero.to(torch.float16)
    if not (torch.isfinite(scale16).all() and torch.isfinite(zero16).all()):
        raise FormatError("weight is too large for int4's 16-bit scales; keep this layer in fp or int8")
    live = scale > 0
    safe = torch.where(live, scale, torch.ones_like(scale))
    q = torch.round((x3 - mn[..., None]) / safe[..., None]).clamp_(0, 15)
    codes = torch.where(live[..., None], q, torch.full_like(q, 8)).to(torch.uint8)
    step, off = scale16.to(torch.float32)[..., None], zero16.to(torch.float32)[..., None]
    return codes, decode("int4", codes, step, off), {"scale": scale16, "zero": zero16}


def _nvfp4_error(ax: torch.Tensor, amax_b: torch.Tensor, s_t: torch.Tensor, h3: torch.Tensor) -> torch.Tensor:
    """(out, blocks) activation-weighted error of NVFP4 with block amaxes ``amax_b`` (already clipped): the
    magnitudes ``round_e2m1(|x| / eff) * eff`` (the decoded values' magnitudes; the sign is x's), without codes."""
    denom = E2M1_MAX * s_t
    live_t = denom > 0
    bs32 = amax_b / torch.where(live_t, denom, torch.ones_like(denom))
    bs32 = torch.where(live_t, bs32, torch.zeros_like(bs32)).clamp_(max=E4M3_MAX)
    eff = bs32.to(torch.float8_e4m3fn).to(torch.float32) * s_t
    live = eff > 0
    v = round_e2m1(ax / torch.where(live, eff, torch.ones_like(eff))[..., None]).mul_(eff[..., None])
    v = torch.where(live[..., None], v, torch.zeros_like(v))
    return (ax - v).square_().mul_(h3).sum(dim=-1, dtype=torch.float64)


def clip_quantize(fmt: Format, w: torch.Tensor, h: torch.Tensor, rows: torch.Tensor | None = None) -> Packed:
    """Packed codes of ``fmt`` for ``w`` with each scale group's clip ratio chosen on ``h`` (see the module).
    ``w`` must already be eligible and finite (``fmt.quantize(w)`` succeeded); ``h`` float32 (in_cols,). With
    ``rows``: only those rows (each group is decided on its own; NVFP4's tensor scale is the whole weight's)."""
    kind = kind_of(fmt)
    out, inp = matrix_shape(w.shape)
    g = group_of(fmt, inp)
    whole = w.detach().reshape(out, inp)
    x3 = (whole if rows is None else whole[rows]).reshape(-1, inp // g, g).to(torch.float32)
    h3 = h.to(device=x3.device, dtype=torch.float32).reshape(inp // g, g)
    s_t = None
    if kind == "nvfp4":
        amax_t = whole.abs().amax().to(torch.float32) if whole.numel() else torch.zeros((), device=x3.device)
        s_t = (amax_t / (E2M1_MAX * E4M3_MAX)).reshape(1)
    shape = tuple(w.shape) if rows is None else (len(rows), inp)
    out = x3.shape[0]

    # the search compares errors only; the chosen ratios' codes and scales are made once at the end, by the same
    # float32 arithmetic (r a float32 value in both), so they are those the search scored
    ax = x3.abs() if kind == "nvfp4" else None
    amax0 = ax.amax(dim=-1) if ax is not None else None
    best_err: torch.Tensor | None = None
    best_r = torch.ones(x3.shape[:2], dtype=torch.float32, device=x3.device)
    for r in CLIP_GRID:
        rt = torch.tensor(r, dtype=torch.float32, device=x3.device)
        if kind == "nvfp4":
            assert s_t is not None and ax is not None and amax0 is not None
            err = _nvfp4_error(ax, amax0 * rt, s_t, h3)
        else:
            _, deq, _ = _int8(x3, rt) if kind == "int8" else _int4(x3, rt)
            err = ((x3 - deq).square_().mul_(h3)).sum(dim=-1, dtype=torch.float64)  # (out, groups)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err  # strict: ties keep the larger ratio
        best_err = torch.where(better, err, best_err)
        best_r = torch.where(better, rt, best_r)
    if kind == "int8":
        best_codes, _, best_scales = _int8(x3, best_r)
    elif kind == "nvfp4":
        assert s_t is not None
        best_codes, _, best_scales = _nvfp4(x3, best_r, s_t)
    else:
        best_codes, _, best_scales = _int4(x3, best_r)

    codes2 = best_codes.reshape(out, inp)
    if kind == "int8":
        tensors = {"scale": best_scales["scale"].reshape(out)}
    elif kind == "nvfp4":
        assert s_t is not None
        tensors = {"block_scale": best_scales["block_scale"].to(torch.float8_e4m3fn), "tensor_scale": s_t}
    else:
        tensors = best_scales
    return pack_codes(fmt, codes2, tensors, shape, w.dtype)
