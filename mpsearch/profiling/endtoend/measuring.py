"""Measuring units end to end: generate with a unit's layers quantized and store its scores, one unit per
transaction.

:func:`quantized` runs chosen layers in a format (with the executor's quantized modules) inside a step window
only, through removable forward hooks; :func:`measure` generates the full-precision reference once, then each
unit with the profile's seeds and conditions, scores it (:mod:`~mpsearch.profiling.endtoend.scores`) and writes it to
the profile file (:mod:`~mpsearch.profiling.endtoend.results`), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time

import numpy as np
import torch

from mpsearch.errors import UsageError
from mpsearch.formats import get_format
from mpsearch.models import get_denoiser
from mpsearch.profiling.endtoend.scores import default_scorers, score_images
from mpsearch.profiling.endtoend.units import FP_UNIT
from mpsearch.profiling.store import EndToEndWriter, Profile
from mpsearch.quantizers import quantize_candidate
from mpsearch.runtime.generation import generate

# the rest of the runtime (its kernels import numba, its hooks diffusers) is imported by :func:`quantized`, not
# with this module: solving from a profile reads the e2e tables through this package and needs none of it

__all__ = ["measure", "quantized"]


class _Swap:
    """Forward hook: inside the window, the layer's output is the quantized module's output."""

    def __init__(self, qmod, steps, window):
        self.qmod, self.steps, self.window = qmod, steps, window

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        if self.window is not None and not self.window[0] <= self.steps.step < self.window[1]:
            return None
        return self.qmod(inputs[0]).to(output.dtype)


@contextlib.contextmanager
def quantized(pipe, layers, fmt: str, window=None, calibration=None):
    """Run ``layers`` of ``pipe``'s denoiser in ``fmt`` (with the executor's quantized modules) inside the
    step window only; layers that cannot take ``fmt`` stay fp. Hooks are removed on exit. A calibrated variant
    (``nvfp4:clip``) is quantized with ``calibration`` (layer name -> Calibration, the profile's)."""
    from mpsearch.runtime.qmodules import quantized_module  # lazy: not needed to read a profile or solve
    from mpsearch.runtime.steps import step_state  # lazy: not needed to read a profile or solve

    den = get_denoiser(pipe)
    modules = dict(den.named_modules())
    handles = []
    with step_state(den) as steps:
        try:
            for name in layers:
                if name not in modules:
                    raise UsageError(f"layer {name!r} is not in the model; see `mpsearch inspect` for layer names")
                module = modules[name]
                f = get_format(fmt)
                if not f.eligible(tuple(module.weight.shape)):
                    continue
                q = quantized_module(module, quantize_candidate(fmt, module.weight.detach(),
                                                                (calibration or {}).get(name)))
                q.cache_dequantized = True
                handles.append(module.register_forward_hook(_Swap(q, steps, window)))
            if layers and not handles:
                raise UsageError(f"none of {list(layers)[:3]} can take {fmt} (shape not eligible); measure an "
                                 "eligible format (see `mpsearch inspect`)")
            yield
        finally:
            for h in handles:
                h.remove()


def _name(fn) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def measure(pipe, profile: Profile, units, *, content_scorer=None, features=None, seeds=None,
            progress: bool = False) -> dict:
    """Measure ``units`` end to end and store them in ``profile``'s file, one unit at a time (resumable).

    ``content_scorer(images, conditions) -> (N,) scores`` (higher = more faithful to the condition) and
    ``features(images) -> (N, D)`` replace the default digit classifier's (pass a CLIP scorer or an
    Inception extractor for real models). ``seeds`` (default: the profile's) are the generation seeds.
    Returns {"run", "measured": units measured now, "skipped": units already stored, "seconds",
    "generations": pipeline calls made now}.
    """
    if profile.path is None:
        raise UsageError("the profile has no file to store end-to-end results in; load it with Profile.load(path)")
    cfg = profile.config
    conditions = tuple(cfg.get("prompts") or cfg["labels"])
    seeds = tuple(int(s) for s in (seeds if seeds is not None else cfg["seeds"]))
    steps, guidance, size = int(cfg["steps"]), cfg.get("guidance_scale"), cfg.get("size")
    if content_scorer is None and features is None:
        content_scorer, features = default_scorers(pipe, conditions)
    for what, fn in (("content_scorer", content_scorer), ("features", features)):
        if fn is not None and not callable(fn):
            raise UsageError(f"{what} must be a function of the images, got {type(fn).__name__}")
    config = {"seeds": list(seeds), "steps": steps, "conditions": list(conditions), "guidance_scale": guidance,
              "size": size, "content_scorer": _name(content_scorer), "features": _name(features),
              "profile_weights": profile.weights}
    run = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    labels = [c for _ in seeds for c in conditions]
    calibration = profile.calibration() if any(":" in u.format for u in units if u.format) else {}
    gen = lambda: np.concatenate([generate(pipe, conditions, s, steps, guidance, size) for s in seeds])  # noqa: E731
    units = [FP_UNIT] + [u for u in units if u.key != FP_UNIT.key]
    t_all = time.perf_counter()
    with EndToEndWriter(profile.path) as store:
        done = store.begin_run(run, config)
        todo = [u for u in units if u.key not in done]
        out = {"run": run, "measured": 0, "skipped": len(units) - len(todo), "generations": 0}
        if todo:
            ref = gen()
            out["generations"] += len(seeds)
            ref_features = features(ref) if features is not None else None
            it = todo
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(todo, desc="end-to-end", unit="unit")
            for u in it:
                t0 = time.perf_counter()
                if u.kind == "fp":
                    images = ref
                else:
                    with quantized(pipe, u.layers, u.format, u.window, calibration):
                        images = gen()
                    out["generations"] += len(seeds)
                scores = score_images(ref, images, labels, content_scorer, features, ref_features)
                start, stop = u.window if u.window is not None else (0, steps)
                store.write_unit(run, u.key, u.layers, u.format, start, stop, u.kind, time.perf_counter() - t0,
                                 scores)
                out["measured"] += 1
    out["seconds"] = time.perf_counter() - t_all
    return out
