"""``gptq``: error-compensating rounding (GPTQ, Frantar et al. 2022) onto the format's fixed RTN scales.

Notation: W (out, in_cols) = w.reshape(out, -1), H = calib.hessian (mean of x x^T), all in float64.

1. Scales are fixed beforehand: those of ``fmt.quantize(w)`` (the RTN recipe on the original W: int8 row scales;
   nvfp4 tensor and block scales; int4 float16 scale and zero, used for rounding and decoding alike).
2. Columns j with H_jj = 0 (inputs never active) get H_jj = 1; their weights are left as they are (they are
   rounded, and their error is not propagated since their row of H is 0). Then lambda = 0.01 * mean(diag H) (after
   that fix) is added to the diagonal.
3. Columns are processed in natural order (the paper's), or in the ``order`` given (W's columns and H's rows
   and columns permuted alike, the codes put back in the weight's order; with the scales fixed beforehand every
   column keeps its own scale). U = the upper Cholesky factor of the (permuted) H^-1. In blocks of 128
   columns with lazy batch updates: column j is rounded to q_j = decode(encode(w_j)) with the format's own rounding
   on its fixed scale (see ``codes``: int8 round half to even clamped to +-127; int4 round((w - zero16) / scale16)
   half to even clamped to -8..7, plus 8; nvfp4 nearest E2M1, ties to even, saturating), e_j = (w_j - q_j) / U_jj,
   and the columns after j within the block receive ``-= e_j U_j,k``; after a block, the columns after it receive
   ``-= E U[block, rest]``. q_j is the float32 value the format decodes the code to, so the compensation is for
   exactly the weight the executor uses.

Deterministic: a fixed order, float64 throughout the loop.

Why natural order and not act-order (descending H_jj, :func:`act_order`): on the default models act-order halves
the layers' output error on the calibration rows and lowers it on held-out ones, but the same plan's test-seed
images got worse with it (docs/benchmarks.md, "GPTQ's column order"), so it is kept for comparison only.
"""

from __future__ import annotations

import torch

from mpsearch.errors import FormatError
from mpsearch.formats import Format, Packed, matrix_shape
from mpsearch.quantizers.codes import decode, encode, grid_of, kind_of, pack_codes, scale_tensors

GPTQ_BLOCK = 128
DAMP = 0.01


def inverse_hessian_factor(hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U float64, the upper Cholesky factor of the damped H^-1; dead: columns whose H_jj was 0."""
    h = hessian.to(torch.float64).clone()
    diag = h.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag += DAMP * diag.mean()
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise FormatError("the calibration hessian is not positive definite even after damping; recalibrate the "
                          "layer on more rows, or use the clip variant")
    hinv = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0:
        raise FormatError("the inverse calibration hessian lost positive definiteness in float64; recalibrate "
                          "the layer, or use the clip variant")
    return upper, dead


def act_order(hessian: torch.Tensor) -> torch.Tensor:
    """GPTQ's act-order: the columns by descending ``H_jj``, ties in column order (stable). Not the default (see
    the module)."""
    return torch.sort(hessian.diagonal().to(torch.float64), descending=True, stable=True).indices


def gptq_quantize(fmt: Format, w: torch.Tensor, hessian: torch.Tensor, rows: torch.Tensor | None = None, *,
                  order: torch.Tensor | None = None) -> Packed:
    """Packed codes of ``fmt`` for ``w`` on RTN's scales, rounded column by column with GPTQ's error feedback
    (see the module); ``hessian`` (in_cols, in_cols). With ``rows``: only those rows (each row is rounded on its
    own), on the scales ``fmt.quantize_rows`` gives them. ``order``: the column order (default: natural;
    :func:`act_order` for GPTQ's act-order, for comparison)."""
    kind = kind_of(fmt)
    rtn = fmt.quantize(w) if rows is None else fmt.quantize_rows(w, rows)
    out, inp = matrix_shape(w.shape)
    if rows is not None:
        w = w.detach().reshape(out, inp)[rows]
        out = w.shape[0]
    grid = grid_of(rtn)
    step32, off32 = grid.expanded(torch.float32)
    h = hessian.to(w.device)
    order = (torch.arange(inp, device=w.device) if order is None
             else torch.as_tensor(order, dtype=torch.long, device=w.device))
    if sorted(order.tolist()) != list(range(inp)):
        raise FormatError(f"gptq's column order must be a permutation of the {inp} input columns")
    upper, _ = inverse_hessian_factor(h[order][:, order])
    W = w.detach().reshape(out, inp).to(torch.float64)[:, order].clone()
    step32 = step32[:, order]
    off32 = None if off32 is None else off32[:, order]
    step64, off64 = step32.to(torch.float64), None if off32 is None else off32.to(torch.float64)
    codes = torch.empty((out, inp), dtype=torch.int8 if kind == "int8" else torch.uint8, device=w.device)

    for i1 in range(0, inp, GPTQ_BLOCK):
        i2 = min(i1 + GPTQ_BLOCK, inp)
        w1 = W[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        for k in range(i2 - i1):
            j = i1 + k
            col = w1[:, k]
            c = encode(kind, col, step64[:, j], None if off64 is None else off64[:, j])
            q = decode(kind, c, step32[:, j], None if off32 is None else off32[:, j]).to(torch.float64)
            codes[:, order[j]] = c
            e = (col - q) / u1[k, k]
            w1[:, k:] -= torch.outer(e, u1[k, k:])
            err1[:, k] = e
        if i2 < inp:
            W[:, i2:] -= err1 @ upper[i1:i2, i2:]
    return pack_codes(fmt, codes, scale_tensors(rtn), tuple(rtn.shape), rtn.dtype)
