"""im2col for the formats' conv path: a convolution is ``patches @ W.T`` with one patch row per output pixel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def patch_view(x: torch.Tensor, kernel: Sequence[int], dilation: Sequence[int], padding: Sequence[int],
               stride: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """A strided view (N, oh, ow, C, kh, kw) of the (zero-padded) NCHW ``x``: row (n, i, j) is the patch the
    conv's output pixel (i, j) sees, its columns ordered like a conv weight's (C, kh, kw). Also returns the
    padded input (whose memory the view reads) and (oh, ow)."""
    kh, kw = kernel
    if padding[0] or padding[1]:
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    n, c, h, w = x.shape
    sn, sc, sh, sw = x.stride()
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    view = x.as_strided((n, oh, ow, c, kh, kw),
                        (sn, sh * stride[0], sw * stride[1], sc, sh * dilation[0], sw * dilation[1]))
    return view, x, oh, ow


def im2col(x: torch.Tensor, kernel: Sequence[int], dilation: Sequence[int], padding: Sequence[int],
           stride: Sequence[int]) -> tuple[torch.Tensor, int, int]:
    """(N*oh*ow, C*kh*kw) patches of an NCHW tensor, rows in (n, oh, ow) order, columns ordered like a conv
    weight's (C, kh, kw): one strided view and one copy, much faster than F.unfold + transpose on the CPU."""
    view, _, oh, ow = patch_view(x, kernel, dilation, padding, stride)
    n, _, _, c, kh, kw = view.shape
    return view.reshape(n * oh * ow, c * kh * kw), oh, ow


def patch_amax(xp: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
               channel_dim: int = 1) -> torch.Tensor:
    """(N, oh, ow): the largest |value| of each conv patch of the padded input ``xp`` (channels along
    ``channel_dim``: 1 for NCHW, 3 for NHWC) without building the patches: each pixel's amax over its channels
    (``amin`` and ``amax`` separately: along a dim, ``torch.aminmax`` is many times slower on the CPU), max-pooled
    over the patch window (padding zeros count as 0, as in the im2col row)."""
    pix = torch.maximum(xp.amax(dim=channel_dim), -xp.amin(dim=channel_dim)).abs_()  # abs: +0 where all zero
    return F.max_pool2d(pix[:, None], tuple(kernel), stride=tuple(stride), dilation=tuple(dilation))[:, 0]


__all__ = ["patch_view", "im2col", "patch_amax"]
