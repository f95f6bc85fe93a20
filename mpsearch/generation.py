"""Run a pipeline on a set of conditions with fixed seeds: the one place that knows how to call it."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .errors import UsageError


@contextlib.contextmanager
def quiet(pipe):
    """Silence the pipeline's own progress bar (mpsearch shows its own), restoring the setting after."""
    old = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    try:
        yield pipe
    finally:
        if hasattr(pipe, "_progress_bar_config"):
            pipe._progress_bar_config = old


def generate(pipe, labels, seed: int, steps: int = 20, guidance_scale: float | None = None) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] for class ``labels`` from one seeded generator."""
    labels = [int(l) for l in labels]
    if not labels:
        raise UsageError("no conditions to generate: give at least one label (e.g. --labels 0,1,2)")
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    kwargs = {"class_labels": labels, "num_inference_steps": int(steps), "output_type": "np",
              "generator": torch.Generator().manual_seed(int(seed))}
    if guidance_scale is not None:
        kwargs["guidance_scale"] = float(guidance_scale)
    with quiet(pipe), torch.no_grad():
        return np.asarray(pipe(**kwargs).images, dtype=np.float32)


def generate_many(pipe, labels, seeds, steps: int = 20, guidance_scale: float | None = None) -> np.ndarray:
    """``generate`` for each seed, concatenated in seed order."""
    return np.concatenate([generate(pipe, labels, s, steps, guidance_scale) for s in seeds])
