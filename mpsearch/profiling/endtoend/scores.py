"""Scoring generated images against full precision, metric by metric, and turning scores into damage.

:func:`score_images` measures content (SSIM; the condition score and class agreement from a ``content_scorer``)
and quality (image PSNR and SQNR; the Frechet distance in a ``features`` space); :func:`default_scorers` gives
the shipped digit classifier's scorer and features. :data:`METRIC_KIND` says which kind each metric is,
:data:`OBJECTIVE_METRICS` which metrics the objective averages, and :func:`damage` turns a stored value into
damage against full precision (0 = none, larger = worse).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from mpsearch.classifier import load_classifier, to_tensor
from mpsearch.errors import UsageError
from mpsearch.metrics import end_to_end_metrics, frechet_distance, get_metric, psnr, sqnr, ssim

__all__ = ["METRIC_KIND", "OBJECTIVE_METRICS", "damage", "default_scorers", "score_images"]

#: the metrics the end-to-end tier stores, and their kind (from ``mpsearch.metrics``' registry); the objective
#: averages the metrics of a kind (class_agreement is stored and reported but left out of the objective: with
#: a few dozen images it moves in coarse steps)
METRIC_KIND = {m: end_to_end_metrics()[m] for m in ("ssim", "condition", "class_agreement", "psnr", "sqnr",
                                                    "frechet")}
OBJECTIVE_METRICS = {"content": ("ssim", "condition"), "quality": ("psnr", "frechet")}


def damage(metric: str, value, fp_value):
    """A stored metric value turned into damage against full precision (0 = none, larger = worse): the
    registry's error of the metric (1 - SSIM; 10^(-dB/10) for PSNR and SQNR; the drop in condition score or
    class agreement from full precision's ``fp_value``; the Frechet distance itself)."""
    if metric not in METRIC_KIND:
        raise UsageError(f"unknown end-to-end metric {metric!r}; expected one of {', '.join(METRIC_KIND)}")
    return get_metric(metric).error(value, fp_value)


def default_scorers(pipe, conditions):
    """(content_scorer, features) from the shipped digit classifier, or (None, None) where it cannot read the
    images (text prompts): then condition agreement and the Frechet distance need user-supplied functions."""
    if any(isinstance(c, str) for c in conditions):
        return None, None

    clf = load_classifier()

    @torch.no_grad()
    def digit_condition(images, labels):
        """Softmax probability of the requested digit, per image."""
        p = torch.softmax(clf(to_tensor(images)), -1).numpy()
        return p[np.arange(len(p)), np.asarray(labels, dtype=int)]

    @torch.no_grad()
    def digit_features(images):
        return clf.features(to_tensor(images)).numpy()

    digit_condition.agreement = lambda images, labels: (clf.predict(images).numpy() == np.asarray(labels))
    return digit_condition, digit_features


def score_images(ref, out, conditions, content_scorer=None, features=None, ref_features=None) -> dict:
    """Raw metric values of ``out`` against the full-precision ``ref`` (both (N, H, W, C) in [0, 1])."""
    scores = {"ssim": ssim(ref, out), "psnr": psnr(ref, out),
              "sqnr": sqnr(torch.as_tensor(ref), torch.as_tensor(out))}
    if content_scorer is not None:
        vals = np.asarray(content_scorer(out, list(conditions)), dtype=float).reshape(-1)
        if vals.shape != (len(out),) or not np.isfinite(vals).all():
            raise UsageError(f"content_scorer must return one finite score per image ({len(out)}), got shape "
                             f"{vals.shape}; return e.g. a CLIP score per image")
        scores["condition"] = float(vals.mean())
        agreement = getattr(content_scorer, "agreement", None)
        if agreement is not None:
            scores["class_agreement"] = float(np.mean(agreement(out, list(conditions))))
    if features is not None and len(out) >= 2:
        f_out = np.asarray(features(out), dtype=float)
        f_ref = np.asarray(features(ref) if ref_features is None else ref_features, dtype=float)
        if f_out.ndim != 2 or len(f_out) != len(out):
            raise UsageError(f"features must return an (N, D) array with one row per image ({len(out)}), got "
                             f"shape {f_out.shape}; return e.g. Inception pool features")
        with warnings.catch_warnings():  # few images in many dimensions: singular covariances are expected
            warnings.simplefilter("ignore")
            scores["frechet"] = frechet_distance(f_ref, f_out)
    return scores
