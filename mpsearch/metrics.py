"""Pure metric functions on tensors and images, in a registry by name.

Layer-output metrics compare a quantized output with the full-precision one (``ref``, ``out``); image
metrics compare batches of images in [0, 1] shaped (N, H, W, C) or (N, C, H, W).
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mpsearch.errors import UsageError

_EPS = 1e-20


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``fn(ref, out)``; ``higher_is_better`` says which way is good."""

    name: str
    fn: Callable
    higher_is_better: bool
    kind: str  # "layer", "content" or "quality"
    doc: str = ""


_REGISTRY: dict[str, Metric] = {}


def register_metric(name: str, *, higher_is_better: bool, kind: str):
    def deco(fn):
        _REGISTRY[name] = Metric(name, fn, higher_is_better, kind, (fn.__doc__ or "").strip())
        return fn
    return deco


def get_metric(name: str) -> Metric:
    if name not in _REGISTRY:
        raise UsageError(f"unknown metric {name!r}; expected one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_metrics(kind: str | None = None) -> list[str]:
    return sorted(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


# ---- layer-output metrics (per sample of a batch, then averaged by the caller)

@register_metric("rel_mse", higher_is_better=False, kind="layer")
def rel_mse(ref: torch.Tensor, out: torch.Tensor) -> float:
    """||out - ref||^2 / ||ref||^2."""
    ref, out = ref.double(), out.double()
    return float(((out - ref) ** 2).sum() / ((ref ** 2).sum() + _EPS))


@register_metric("sqnr", higher_is_better=True, kind="layer")
def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(||ref||^2 / ||out - ref||^2); capped at 200."""
    ref, out = ref.double(), out.double()
    noise = float(((out - ref) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise <= 0:
        return 200.0
    return float(min(200.0, 10 * np.log10(max(signal, _EPS) / noise)))


@register_metric("cosine", higher_is_better=True, kind="layer")
def cosine(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors (1 = same direction)."""
    ref, out = ref.double().flatten(), out.double().flatten()
    denom = ref.norm() * out.norm()
    if denom <= 0:
        return 1.0 if torch.equal(ref, out) else 0.0
    return float((ref @ out) / denom)


# ---- image metrics

def _nchw(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise UsageError(f"expected images shaped (N, H, W, C) or (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    elif x.shape[-1] in (1, 3, 4) and x.shape[1] in (1, 3, 4) and x.shape[-1] < x.shape[-2]:
        x = x.permute(0, 3, 1, 2)
    return x


@register_metric("mse", higher_is_better=False, kind="quality")
def mse(ref, out) -> float:
    """Mean squared error of images in [0, 1]."""
    return float(((_nchw(ref) - _nchw(out)) ** 2).mean())


@register_metric("psnr", higher_is_better=True, kind="quality")
def psnr(ref, out) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1], averaged over images; capped at 100."""
    err = ((_nchw(ref) - _nchw(out)) ** 2).flatten(1).mean(1)
    vals = torch.where(err > 0, 10 * torch.log10(1.0 / err.clamp_min(1e-10)), torch.full_like(err, 100.0))
    return float(vals.clamp(max=100.0).mean())


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


@register_metric("ssim", higher_is_better=True, kind="content")
def ssim(ref, out, window: int = 7, sigma: float = 1.5, per_image: bool = False):
    """Structural similarity (Wang et al. 2004), Gaussian window, data range 1, averaged over images
    (``per_image``: an (N,) array, one value per image, whose mean is the average)."""
    a, b = _nchw(ref), _nchw(out)
    c = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    g = _gaussian(window, sigma)
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    filt = lambda x: F.conv2d(x, k, groups=c)  # noqa: E731 - valid padding, as in the reference
    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a ** 2
    s_bb = filt(b * b) - mu_b ** 2
    s_ab = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    if per_image:
        return m.mean(dim=(1, 2, 3)).numpy()
    return float(m.mean())


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples)."""
    from scipy import linalg

    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise UsageError(f"frechet_distance needs two (N>=2, D) feature arrays, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # fewer samples than feature dimensions (small evaluations) make the covariances singular: expected,
        # and the square root of their product is still well defined
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():
            off = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + off) @ (cov_b + off))
    covmean = covmean.real
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
    return max(d, 0.0)  # a distance: the matrix square root's rounding can leave a tiny negative for equal sets


def class_agreement(labels, predicted) -> float:
    """Fraction of images whose predicted class equals the requested one."""
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    return float((labels == predicted).mean()) if len(labels) else float("nan")
