"""Metrics by name: how each is computed, which way is good, how it becomes an error and is normalised.

The registry (filled by :func:`register_metric`, a decorator, like the formats registry) is the one owner of
metric knowledge. Per metric it holds:

* ``fn(ref, out)``: the value from tensors or images (layer outputs ``ref``/``out``; images in [0, 1] shaped
  (N, H, W, C) or (N, C, H, W)); None for metrics only the profile's statistics or a user scorer give;
* ``from_stats(stats, sensitivity)``: for the *profile metrics* (``rel_mse``, ``sqnr``, ``cosine``, ``gn``),
  the (layers, formats, steps) values from the profile's stored sums (err2, ref2, out2, dot) and, for ``gn``,
  its output-sensitivity sums;
* ``error(value, reference=None)``: the value turned into an error, 0 for no damage and larger for worse
  (``reference``: full precision's own value, for metrics scored against it, such as a condition score);
* ``normalization``: how a table of errors is put on a common scale (``"max"``: the largest finite entry is 1);
* ``end_to_end``: the kind (``"content"`` or ``"quality"``) under which the end-to-end tier stores it, if it does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, overload

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from mpsearch.errors import UsageError

#: images as the image metrics take them: a tensor or anything numpy reads, (N, H, W, C) or (N, C, H, W) in [0, 1]
Images = torch.Tensor | npt.ArrayLike
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


class MetricDecorator(Protocol):
    """What :func:`register_metric` returns: registers a function (returned unchanged) or None."""

    @overload
    def __call__(self, fn: None) -> None: ...
    @overload
    def __call__(self, fn: _Fn) -> _Fn: ...

_EPS = 1e-20
_TINY = 1e-30  # the floor of the profile's stored sums


def _identity(value: npt.ArrayLike, reference: float | None = None) -> np.ndarray:
    """The value is already an error (lower is better, 0 = none)."""
    return np.asarray(value, dtype=float)


def _decibels(value: npt.ArrayLike, reference: float | None = None) -> np.ndarray:
    """10^(-dB/10): the relative squared error a dB figure stands for."""
    return 10.0 ** (-np.asarray(value, dtype=float) / 10.0)


def _one_minus(value: npt.ArrayLike, reference: float | None = None) -> np.ndarray:
    """1 - value, for similarities that are 1 when identical."""
    return 1.0 - np.asarray(value, dtype=float)


def _drop(value: npt.ArrayLike, reference: float | None = None) -> np.ndarray:
    """The drop from full precision's own score (negative where the quantized model scores higher)."""
    if reference is None:
        raise UsageError("this metric's error is the drop from full precision's score; pass that score as reference")
    return float(reference) - np.asarray(value, dtype=float)


@dataclass(frozen=True)
class Metric:
    """A registered metric (see the module docstring); ``higher_is_better`` says which way is good and
    ``kind`` is ``"layer"``, ``"content"`` or ``"quality"``."""

    name: str
    fn: Callable | None
    higher_is_better: bool
    kind: str
    doc: str = ""
    error_fn: Callable = _identity
    from_stats: Callable | None = None
    needs_sensitivity: bool = False
    normalization: str = "max"
    end_to_end: str | None = None

    def error(self, value: npt.ArrayLike, reference: float | None = None) -> np.ndarray:
        """``value`` (an array or a number) as an error: 0 = no damage, larger = worse."""
        return self.error_fn(value, reference)

    def normalize(self, cost: npt.ArrayLike) -> np.ndarray:
        """A table of errors on this metric's common scale; inf (ineligible) entries stay inf."""
        return normalize(cost, self.normalization)

    @property
    def from_profile(self) -> bool:
        """Whether a profile's stored statistics give this metric (a *profile metric*)."""
        return self.from_stats is not None


_REGISTRY: dict[str, Metric] = {}
_NORMALIZATIONS = ("max",)


def register_metric(name: str, *, higher_is_better: bool, kind: str, error: Callable = _identity,
                    from_stats: Callable | None = None, needs_sensitivity: bool = False,
                    normalization: str = "max", end_to_end: str | None = None, doc: str = "") -> MetricDecorator:
    """Decorator: register ``fn`` (or None, via ``register_metric(...)(None)``, for metrics that only the
    profile's statistics or a user's scorer give) under ``name``."""
    if kind not in ("layer", "content", "quality") or end_to_end not in (None, "content", "quality"):
        raise UsageError(f"metric {name!r}: kind must be layer, content or quality and end_to_end content, quality "
                         f"or None; got {kind!r} and {end_to_end!r}")
    if normalization not in _NORMALIZATIONS:
        raise UsageError(f"metric {name!r}: normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")

    def deco(fn: Any) -> Any:
        text = (fn.__doc__ or "").strip() if fn is not None else doc
        _REGISTRY[name] = Metric(name, fn, higher_is_better, kind, text, error, from_stats, needs_sensitivity,
                                 normalization, end_to_end)
        return fn
    return deco


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; an unknown name is a UsageError listing the known ones."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown metric {name!r}; expected one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_metrics(kind: str | None = None) -> list[str]:
    """Registered metric names (of ``kind`` if given), sorted."""
    return sorted(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


def profile_metrics() -> tuple[str, ...]:
    """The metrics a profile's statistics give, in registration order (``rel_mse``, ``sqnr``, ``cosine``, ``gn``)."""
    return tuple(n for n, m in _REGISTRY.items() if m.from_profile)


def end_to_end_metrics() -> dict[str, str]:
    """{metric: kind} of the metrics the end-to-end tier stores, in registration order."""
    return {n: m.end_to_end for n, m in _REGISTRY.items() if m.end_to_end is not None}


def normalize(cost: npt.ArrayLike, how: str = "max") -> np.ndarray:
    """``"max"``: ``cost`` divided by its largest finite entry (unchanged when that is not positive)."""
    if how not in _NORMALIZATIONS:
        raise UsageError(f"normalization must be one of {_NORMALIZATIONS}, got {how!r}")
    cost = np.asarray(cost, dtype=float)
    finite = cost[np.isfinite(cost)]
    top = finite.max() if finite.size else 0.0
    return cost / top if top > 0 else cost


def _stats(stats: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(stats[..., i] for i in range(4))  # err2, ref2, out2, dot


def _rel_mse_stats(stats: np.ndarray, sensitivity: np.ndarray | None = None) -> np.ndarray:
    err2, ref2, _, _ = _stats(stats)
    return err2 / np.maximum(ref2, _TINY)


def _sqnr_stats(stats: np.ndarray, sensitivity: np.ndarray | None = None) -> np.ndarray:
    err2, ref2, _, _ = _stats(stats)
    return np.minimum(200.0, 10 * np.log10(np.maximum(ref2, _TINY) / np.maximum(err2, _TINY)))


def _cosine_stats(stats: np.ndarray, sensitivity: np.ndarray | None = None) -> np.ndarray:
    _, ref2, out2, dot = _stats(stats)
    return dot / np.maximum(np.sqrt(ref2 * out2), _TINY)


def _gn_stats(stats: np.ndarray, sensitivity: np.ndarray) -> np.ndarray:
    err2 = stats[..., 0]
    g2, n = sensitivity[..., 0], sensitivity[..., 1]
    return err2 * (g2 / np.maximum(n, 1.0))[:, None, :]


# ---- layer-output metrics (per sample of a batch, then averaged by the caller)

@register_metric("rel_mse", higher_is_better=False, kind="layer", from_stats=_rel_mse_stats)
def rel_mse(ref: torch.Tensor, out: torch.Tensor) -> float:
    """||out - ref||^2 / ||ref||^2."""
    ref, out = ref.double(), out.double()
    return float(((out - ref) ** 2).sum() / ((ref ** 2).sum() + _EPS))


@register_metric("sqnr", higher_is_better=True, kind="layer", error=_decibels, from_stats=_sqnr_stats,
                 end_to_end="quality")
def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(||ref||^2 / ||out - ref||^2); capped at 200."""
    ref, out = ref.double(), out.double()
    noise = float(((out - ref) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise <= 0:
        return 200.0
    return float(min(200.0, 10 * np.log10(max(signal, _EPS) / noise)))


@register_metric("cosine", higher_is_better=True, kind="layer", error=_one_minus, from_stats=_cosine_stats)
def cosine(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors (1 = same direction)."""
    ref, out = ref.double().flatten(), out.double().flatten()
    denom = ref.norm() * out.norm()
    if denom <= 0:
        return 1.0 if torch.equal(ref, out) else 0.0
    return float((ref @ out) / denom)


register_metric("gn", higher_is_better=False, kind="layer", from_stats=_gn_stats, needs_sensitivity=True,
                doc="A layer's squared output error times the mean squared gradient of the denoiser's output with "
                    "respect to that layer's output: a Gauss-Newton estimate of the error carried to the output.")(None)


# ---- image metrics

def _nchw(x: Images) -> torch.Tensor:
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
def mse(ref: Images, out: Images) -> float:
    """Mean squared error of images in [0, 1]."""
    return float(((_nchw(ref) - _nchw(out)) ** 2).mean())


@register_metric("psnr", higher_is_better=True, kind="quality", error=_decibels, end_to_end="quality")
def psnr(ref: Images, out: Images) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1], averaged over images; capped at 100."""
    err = ((_nchw(ref) - _nchw(out)) ** 2).flatten(1).mean(1)
    vals = torch.where(err > 0, 10 * torch.log10(1.0 / err.clamp_min(1e-10)), torch.full_like(err, 100.0))
    return float(vals.clamp(max=100.0).mean())


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


@register_metric("ssim", higher_is_better=True, kind="content", error=_one_minus, end_to_end="content")
def ssim(ref: Images, out: Images, window: int = 7, sigma: float = 1.5,
         per_image: bool = False) -> float | np.ndarray:
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


@register_metric("frechet", higher_is_better=False, kind="quality", end_to_end="quality")
def frechet_distance(feats_a: npt.ArrayLike, feats_b: npt.ArrayLike) -> float:
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


register_metric("condition", higher_is_better=True, kind="content", error=_drop, end_to_end="content",
                doc="A scorer's agreement of each image with its condition (the shipped classifier's probability of "
                    "the requested digit, a CLIP score), averaged; its error is the drop from full precision's.")(None)


@register_metric("class_agreement", higher_is_better=True, kind="content", error=_drop, end_to_end="content")
def class_agreement(labels: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Fraction of images whose predicted class equals the requested one."""
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    return float((labels == predicted).mean()) if len(labels) else float("nan")
