"""Run a pipeline on a set of conditions with fixed seeds: the one place that knows how to call it."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from mpsearch.errors import UsageError
from mpsearch.prompts import DEFAULT_EVAL_PROMPTS, builtin_prompts


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


def takes_prompts(pipe) -> bool:
    """Whether ``pipe`` is conditioned on text (its call takes ``prompt``) rather than on class labels."""
    import inspect

    try:
        params = inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "prompt" in params and "class_labels" not in params


def default_conditions(pipe) -> list:
    """What to generate or evaluate on when no conditions are given: for a text-to-image ``pipe``,
    ``DEFAULT_EVAL_PROMPTS`` held-out prompts of the built-in set (seed 0; never calibration ones,
    :mod:`mpsearch.prompts`); else the class labels 0..9."""
    if takes_prompts(pipe):
        return list(builtin_prompts(DEFAULT_EVAL_PROMPTS, "heldout").prompts)
    return list(range(10))


def _conditions(pipe, conditions) -> tuple[str, list]:
    """('prompt', [str]) or ('class_labels', [int]) for ``pipe``, or a UsageError naming the right option."""
    conditions = list(conditions)
    if not conditions:
        raise UsageError("no conditions to generate: give at least one label (e.g. --labels 0,1,2) "
                         "or, for a text-to-image pipeline, prompts (--prompts FILE or N)")
    text = takes_prompts(pipe)
    if text:
        if not all(isinstance(c, str) for c in conditions):
            raise UsageError(f"{type(pipe).__name__} is conditioned on text: give prompts (--prompts FILE, one "
                             f"per line, or --prompts N built-in ones), not class labels {conditions[:5]}")
        return "prompt", conditions
    if any(isinstance(c, str) for c in conditions):
        raise UsageError(f"{type(pipe).__name__} is class-conditional: give class labels (--labels 0,1,2), "
                         f"not text prompts")
    return "class_labels", [int(c) for c in conditions]


def generate(pipe, labels, seed: int, steps: int = 20, guidance_scale: float | None = None,
             size: int | None = None) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] for ``labels`` from one seeded generator.

    ``labels`` are class ids for a class-conditional pipeline, or text prompts (``str``) for a text-to-image
    one (SD, SDXL, PixArt, SD3, FLUX). Classifier-free guidance is the pipeline's own: with
    ``guidance_scale > 1`` SD-style pipelines run the denoiser on one batch ``[uncond, cond]``, so every hook
    (the profiler's, the cache's) sees both halves. ``size`` sets height = width in pixels where the
    pipeline takes them (and turns off PixArt's resolution binning, so the size is exact).
    """
    key, conditions = _conditions(pipe, labels)
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}; pass e.g. --steps 20")
    kwargs = {key: conditions, "num_inference_steps": int(steps), "output_type": "np",
              "generator": torch.Generator().manual_seed(int(seed))}
    if guidance_scale is not None:
        kwargs["guidance_scale"] = float(guidance_scale)
    if size is not None:
        import inspect

        params = inspect.signature(pipe.__call__).parameters
        if "height" not in params:
            raise UsageError(f"{type(pipe).__name__} has a fixed image size; leave the size out")
        kwargs.update(height=int(size), width=int(size))
        if "use_resolution_binning" in params:
            kwargs["use_resolution_binning"] = False
    with quiet(pipe), torch.no_grad():
        return np.asarray(pipe(**kwargs).images, dtype=np.float32)


def generate_many(pipe, labels, seeds, steps: int = 20, guidance_scale: float | None = None,
                  size: int | None = None) -> np.ndarray:
    """``generate`` for each seed, concatenated in seed order."""
    return np.concatenate([generate(pipe, labels, s, steps, guidance_scale, size) for s in seeds])
