"""Paired per-image comparisons: is method A's image error really different from B's, or within noise?

Image MSE is heavy-tailed (one flipped trajectory can dominate a mean), so every verdict rests on two paired
tests over the same images: the two-sided Wilcoxon signed-rank test of the per-image differences
(scipy.stats.wilcoxon; Holm-corrected across a family of comparisons) and a paired bootstrap confidence
interval of the ratio of mean errors. ``better`` / ``worse`` need both: the corrected p below ``alpha`` and
the interval on one side of 1. Anything else is a tie.
"""

from __future__ import annotations

import numpy as np

__all__ = ["summary", "ratio_ci", "wilcoxon_p", "holm", "compare", "verdicts"]


def summary(per_image) -> dict:
    """Mean, median and 90th percentile of per-image errors."""
    x = np.asarray(per_image, dtype=float)
    return {"mean": float(x.mean()), "median": float(np.median(x)), "p90": float(np.percentile(x, 90)),
            "n": int(x.size)}


def ratio_ci(a, b, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) / mean(b)`` and its paired percentile bootstrap interval (images resampled together)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"paired 1-D samples of equal length >= 2 expected, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-300)
    lo, hi = np.percentile(ratios, [50 * (1 - level), 50 * (1 + level)])
    return float(a.mean() / max(b.mean(), 1e-300)), float(lo), float(hi)


def wilcoxon_p(a, b) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences (1.0 when they are all zero)."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox").pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = p.size
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def compare(a, b, **kw) -> dict:
    """Errors ``a`` against ``b`` on the same images: ratio of means with its interval, raw Wilcoxon p."""
    ratio, lo, hi = ratio_ci(a, b, **kw)
    return {"ratio": ratio, "lo": lo, "hi": hi, "p": wilcoxon_p(a, b)}


def verdicts(comparisons: list[dict], *, alpha: float = 0.05) -> list[str]:
    """For each comparison of ``a`` (the method under test) with ``b``: ``"better"`` (a's error lower),
    ``"worse"`` or ``"tie"``, Holm-corrected over the list; adds ``p_holm`` to each dict."""
    adj = holm([c["p"] for c in comparisons]) if comparisons else []
    out = []
    for c, p in zip(comparisons, adj, strict=True):
        c["p_holm"] = float(p)
        if p < alpha and c["hi"] < 1.0:
            out.append("better")
        elif p < alpha and c["lo"] > 1.0:
            out.append("worse")
        else:
            out.append("tie")
    return out
