"""Output sensitivity: how strongly the denoiser's output responds to each candidate layer's output.

The local tier measures each layer's own output error ``||y_q - y||^2``; what matters is the error it causes
in the denoiser's output. To second order (Gauss-Newton) a perturbation ``d`` of a layer's output ``y``
moves the denoiser's output by ``||J d||^2`` with ``J = df/dy``; for an error spread evenly over ``y``'s
``n`` elements that is ``Tr(J^T J) / n * ||d||^2`` in expectation. Hutchinson's estimator on the output side,
``Tr(J^T J) = E_u ||J^T u||^2`` for Rademacher ``u`` over ``f``, gives it for every layer at once from one
backward pass per denoiser call.

The profiler records each call's inputs during its full-precision run and, after the run, replays them with
gradients: per (layer, step) it stores ``g2 = sum ||J^T u||^2`` and ``n = sum of the output's elements``. The
``gn`` metric (``Profile.metric("gn")``) is the layer's measured output error times ``g2 / n``: the local
error carried to the denoiser's output. The model is left exactly as it was (no gradients kept,
``requires_grad`` flags restored).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mpsearch.errors import ProfileError

__all__ = ["CallRecorder", "output_sensitivity"]


def _clone(v):
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


def _first_tensor(out):
    out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)
    return out if isinstance(out, torch.Tensor) else None


class CallRecorder:
    """A forward pre-hook (``with_kwargs=True``) that keeps a copy of every denoiser call's inputs and the
    step a :class:`~mpsearch.runtime.qmodules.StepTracker` (registered before it) assigns to that call."""

    def __init__(self, tracker=None):
        self.tracker = tracker
        self.calls: list[tuple[int, tuple, dict]] = []
        self.paused = False

    def __call__(self, module, args, kwargs):
        if not self.paused:
            step = self.tracker.step if self.tracker is not None else len(self.calls)
            self.calls.append((int(step), tuple(_clone(a) for a in args), {k: _clone(v) for k, v in kwargs.items()}))
        return None


def replayed_steps(steps: int, replay_steps: int | None) -> list[int]:
    """The steps whose calls are replayed: all, or ``replay_steps`` of them evenly spread (first and last
    included when two or more)."""
    if replay_steps is None or replay_steps >= steps:
        return list(range(steps))
    if replay_steps == 1:
        return [(steps - 1) // 2]
    return sorted({int(round(v)) for v in np.linspace(0, steps - 1, replay_steps)})


def _interpolate(out: np.ndarray, kept: list[int]) -> np.ndarray:
    """Fill the steps not in ``kept`` by linear interpolation between the nearest kept steps (constant
    beyond the ends), per layer and column."""
    steps = out.shape[1]
    grid = np.arange(steps)
    for i in range(out.shape[0]):
        for c in range(out.shape[2]):
            out[i, :, c] = np.interp(grid, kept, out[i, kept, c])
    return out


def output_sensitivity(denoiser: torch.nn.Module, calls, modules, steps: int, *, samples: int = 1,
                       seed: int = 0, replay_steps: int | None = None) -> np.ndarray:
    """(L, steps, 2): per layer (``modules``, in order) and step, ``sum ||J^T u||^2`` and the number of
    output elements, over ``calls`` (``(step, args, kwargs)`` as :class:`CallRecorder` keeps them) and
    ``samples`` Rademacher vectors per call.

    ``replay_steps``: replay only the calls of that many steps (:func:`replayed_steps`) and interpolate the
    other steps' values linearly between them (a fraction of the cost, for a quantity that varies slowly
    over steps)."""
    out = np.zeros((len(modules), steps, 2))
    if not calls:
        return out
    kept = replayed_steps(steps, replay_steps)
    if len(kept) < steps:
        seen = {int(step) for step, _, _ in calls}
        kept = [s for s in kept if s in seen] or sorted(seen)[:1]
        keep = set(kept)
        calls = [c for c in calls if c[0] in keep]
    params = [m.weight for m in modules]
    flags = [p.requires_grad for p in params]
    gen = torch.Generator().manual_seed(int(seed))
    captured: list[list[torch.Tensor]] = [[] for _ in modules]

    def keep(i):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                captured[i].append(output)
        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        for p in params:
            p.requires_grad_(True)  # so that every candidate layer's output is on the graph
        with torch.enable_grad():
            for step, args, kwargs in calls:
                for c in captured:
                    c.clear()
                y = _first_tensor(denoiser(*args, **kwargs))
                if y is None or not y.requires_grad or not 0 <= step < steps:
                    continue
                flat = [(i, t) for i, c in enumerate(captured) for t in c]
                # float16 backward passes overflow easily: scale u down (gradients are linear in u), undo after
                scale = 2.0 ** -10 if y.dtype == torch.float16 else 1.0
                for k in range(samples):
                    u = (torch.randint(0, 2, y.shape, generator=gen) * 2 - 1).to(device=y.device, dtype=y.dtype)
                    grads = torch.autograd.grad(y, [t for _, t in flat], grad_outputs=u * scale,
                                                retain_graph=k < samples - 1, allow_unused=True)
                    for (i, t), g in zip(flat, grads):
                        g2 = 0.0 if g is None else float(g.double().square().sum()) / scale ** 2
                        if not math.isfinite(g2):
                            raise ProfileError(
                                f"the output-sensitivity pass got a gradient that is not finite at step {step} "
                                f"(layer {i}, {y.dtype}); profile the model in float32 or bfloat16")
                        out[i, step, 0] += g2
                        out[i, step, 1] += t.numel()
                for c in captured:
                    c.clear()
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    out[..., 0] /= samples
    out[..., 1] /= samples
    if replay_steps is not None and len(kept) < steps:
        out = _interpolate(out, [s for s in kept if 0 <= s < steps])
    return out
