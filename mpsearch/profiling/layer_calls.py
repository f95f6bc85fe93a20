"""One recording generation for compute budgets: each candidate layer's MACs per denoiser call and, per window
of steps, how much of its error its activation quantization causes (weight-only error / W+A error).

:mod:`mpsearch.allocation.compute` turns these into bit-operation costs and activation-precision variants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mpsearch.errors import UsageError
from mpsearch.formats import available_formats, get_format
from mpsearch.layer_types import layer_type_of
from mpsearch.models import describe, get_denoiser
from mpsearch.offload import has_offloaded_weights, model_offload_hook
from mpsearch.quantizers.candidate import timing_stand_in
from mpsearch.runtime.generation import generate, takes_prompts

# the rest of the runtime (its kernels import numba, its hooks diffusers) is imported by the recording, not with
# LayerCalls: solving from a profile needs none of it

__all__ = ["LayerCalls", "record_layer_calls", "step_windows"]


def step_windows(steps: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous windows [start, stop) covering ``steps`` steps as evenly as possible."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= steps:
        raise UsageError(f"--act-windows must be an integer from 1 to the {steps} profiled steps, got {n!r}")
    edges = np.linspace(0, steps, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@dataclass
class LayerCalls:
    """What one recording forward saw: MACs per denoiser call of each layer, and error ratios per window."""

    names: tuple[str, ...]
    macs: np.ndarray  # (L,) multiply-accumulates per denoiser call
    calls: int  # denoiser calls seen
    windows: list[tuple[int, int]]
    formats: tuple[str, ...]  # formats that quantize activations, in the order of `ratio`
    ratio: np.ndarray  # (L, A, W): weight-only error / weight-and-activation error; NaN where not measured
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"layers": list(self.names), "macs": [int(m) for m in self.macs], "calls": self.calls,
                "windows": [list(w) for w in self.windows], "formats": list(self.formats),
                "ratio": np.where(np.isnan(self.ratio), None, self.ratio).tolist()}


def record_layer_calls(pipe, info=None, *, steps: int = 20, windows: int = 2, conditions=None, seed: int = 0,
                       guidance_scale=None, formats=None) -> LayerCalls:
    """One generation with hooks: each candidate layer's MACs per denoiser call and, for every format that
    quantizes activations (``formats``: default all such formats the layer may take), the ratio of the
    weight-only error to the weight-and-activation error in each of ``windows`` windows of ``steps`` steps.
    """
    from mpsearch.runtime.qmodules import quantized_module  # lazy: not needed to read a profile or solve
    from mpsearch.runtime.steps import FixedStep, acquire_step_state, release_step_state  # lazy

    den = get_denoiser(pipe)
    if has_offloaded_weights(den) or model_offload_hook(den) is not None:
        raise UsageError("the denoiser is offloaded (enable_model_cpu_offload / enable_sequential_cpu_offload / a "
                         "device_map), which the compute-budget recording does not support; record it with the "
                         "denoiser on the device (pipe.remove_all_hooks(); pipe.to('cuda'))")
    info = info or describe(den)
    wins = step_windows(steps, windows)
    act_formats = tuple(f for f in (formats or available_formats()) if get_format(f).quantizes_activations)
    if conditions is None:
        conditions = ["a photo of a cat"] if takes_prompts(pipe) else [0, 1]
    modules = dict(den.named_modules())
    L, A, W = len(info.layers), len(act_formats), len(wins)
    macs = np.zeros(L)
    sums = np.zeros((L, A, W, 2))  # err2 weight-only, err2 with activations
    counter = {"calls": 0}
    window_of = np.zeros(steps, dtype=int)
    for w, (a, b) in enumerate(wins):
        window_of[a:b] = w

    fixed = FixedStep(0)  # with act_windows (0, 1, False): the weight-only variant of a W+A format
    state = acquire_step_state(den)
    hooks = [den.register_forward_hook(lambda *_: counter.__setitem__("calls", counter["calls"] + 1))]

    def probe(li, module, pairs):
        layer_type = layer_type_of(module)

        @torch.no_grad()
        def hook(mod, inputs, output):
            x = inputs[0]
            macs[li] += layer_type.macs(mod, x, output)
            s = min(max(state.step, 0), steps - 1)
            y = output.float()
            for ai, (wo, act) in pairs:
                sums[li, ai, window_of[s], 0] += float((wo(x).float() - y).square().sum(dtype=torch.float64))
                sums[li, ai, window_of[s], 1] += float((act(x).float() - y).square().sum(dtype=torch.float64))
        return hook

    try:
        for li, layer in enumerate(info.layers):
            module = modules[layer.name]
            pairs = []
            for ai, f in enumerate(act_formats):
                if f not in layer.eligible:
                    sums[li, ai] = np.nan
                    continue
                packed = timing_stand_in(f, module.weight.detach())
                wo = quantized_module(module, packed, act_windows=[(0, 1, False)])
                wo.step_state = fixed
                act = quantized_module(module, packed)
                for q in (wo, act):
                    q.cache_dequantized = True
                pairs.append((ai, (wo, act)))
            hooks.append(module.register_forward_hook(probe(li, module, pairs)))
        t0 = time.perf_counter()
        generate(pipe, conditions, seed, steps, guidance_scale)
        seconds = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
        release_step_state(den)
    calls = max(counter["calls"], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sums[..., 1] > 0, sums[..., 0] / sums[..., 1], 1.0)
    ratio = np.where(np.isnan(sums[..., 0]), np.nan, ratio)
    return LayerCalls(info.names, macs / calls, calls, wins, act_formats, ratio, seconds)
