"""Score a plan: generate with held-out seeds, compare with full precision (image and content metrics)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from mpsearch.apps.evidence import DEV_SEEDS
from mpsearch.classifier import IMAGE_SIZE, to_tensor
from mpsearch.metrics import class_agreement, frechet_distance, mse, psnr, ssim
from mpsearch.models import measured_bytes
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import default_conditions, generate_many

#: seeds never used for profiling by default (profiling uses 0, 1, ...): development seeds (mpsearch.apps.evidence)
HELD_OUT_SEEDS = DEV_SEEDS[:2]


def _shape(images) -> str:
    n, h, w, c = np.shape(images) if np.ndim(images) == 4 else (0, 0, 0, 0)
    return f"{h}x{w} with {c} channel(s)" if n else f"of shape {tuple(np.shape(images))}"


def classifier_reads(images) -> bool:
    """Whether the bundled digit classifier applies to ``images`` (N, H, W, C): the embedded default's 16x16
    grey digits; a colour or larger model's images get no class-based metrics."""
    return np.ndim(images) == 4 and tuple(np.shape(images)[1:]) == (IMAGE_SIZE, IMAGE_SIZE, 1)


def image_scores(ref: np.ndarray, out: np.ndarray, labels=None, classifier=None) -> dict:
    """MSE, PSNR, SSIM of ``out`` against ``ref``; class agreement and Frechet distance with a classifier (where
    it reads the images, else a ``note`` says they were skipped)."""
    scores = {"mse": mse(ref, out), "psnr": psnr(ref, out), "ssim": ssim(ref, out)}
    per_image = np.square(np.asarray(out, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
    per_image = per_image.reshape(len(out), -1).mean(axis=1)  # heavy-tailed: report median and p90 beside the mean
    scores.update(mse_per_image=[float(v) for v in per_image], mse_median=float(np.median(per_image)),
                  mse_p90=float(np.percentile(per_image, 90)))
    if classifier is not None and labels is not None and not classifier_reads(out):
        scores["note"] = (f"class agreement and Frechet distance skipped: the digit classifier reads "
                          f"{IMAGE_SIZE}x{IMAGE_SIZE} grey digits, these images are {_shape(out)}")
    elif classifier is not None and labels is not None:
        with torch.no_grad():
            x_out, x_ref = to_tensor(out), to_tensor(ref)
            pred = classifier(x_out).argmax(-1).numpy()
            scores["class_agreement"] = class_agreement(labels, pred)
            if len(out) > 2:
                f_ref = classifier.features(x_ref).numpy()
                f_out = classifier.features(x_out).numpy()
                scores["frechet"] = frechet_distance(f_ref, f_out)
    return scores


def evaluate_plan(pipe, plan, *, labels=None, seeds=HELD_OUT_SEEDS, steps: int = 20,
                  guidance_scale=None, reference: np.ndarray | None = None, classifier=None,
                  size: int | None = None) -> dict:
    """Generate with ``plan`` applied (None: full precision) and score against full precision.

    ``labels``: class ids or prompts; None: ``mpsearch.runtime.generation.default_conditions`` (held-out built-in
    prompts for a text-to-image pipeline, never calibration ones; else the labels 0..9). ``size``: image height
    and width in pixels (None: the pipeline's default).
    Returns scores plus ``bytes`` (measured) and ``seconds`` (generation wall time).
    """
    if labels is None:
        labels = tuple(default_conditions(pipe))

    if reference is None:
        reference = generate_many(pipe, labels, seeds, steps, guidance_scale, size)
    with apply_plan(pipe, plan) if plan is not None else contextlib.nullcontext():
        nbytes = measured_bytes(pipe)
        t0 = time.perf_counter()
        images = generate_many(pipe, labels, seeds, steps, guidance_scale, size)
        seconds = time.perf_counter() - t0
    all_labels = np.tile(np.asarray(labels), len(seeds))
    scores = image_scores(reference, images, all_labels, classifier)
    scores.update(bytes=int(nbytes), seconds=seconds)
    return scores
