"""A measured latency table: seconds per denoiser call of every candidate layer in every format it may take.

The compute budget (``mpsearch solve --compute``) costs bit operations by default; a latency table, measured on
the machine at hand, replaces them with seconds (``--compute-cost latency``). It is made in two passes:

1. Capture: one denoiser call of a real generation (the profile's conditions, guidance and size, so the batch
   is the one the plans will run) with a forward hook on each candidate layer, which keeps the layer's first
   input of that call and counts how often the layer runs per denoiser call.
2. Timing: each layer on its captured input, alone, in every format it is eligible for: ``fp`` is the original
   module; the others are the executor's own quantized modules (``qmodules.quantized_module`` on the packed
   weight, dequantizing per call as the executor does), and, for formats that quantize activations (W8A8,
   W4A4), also the same module with its activations kept in full precision (the weight-only variant that a
   plan's fp-activation windows run). ``torch.utils.benchmark.Timer.blocked_autorange`` does the warm-up,
   the block size, the repeats and the accelerator synchronization; the median is kept.

A layer's seconds per denoiser call = median seconds of one call x calls per denoiser call. The sum over the
layers of a plan is what the solver constrains: the candidate layers only (attention softmax, norms and other
unquantized work are the same in every plan and are left out), timed alone (no overlap between layers).
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from dataclasses import dataclass, field

import numpy as np
import torch

from mpsearch.errors import MpsearchError, UsageError
from mpsearch.formats import available_formats, get_format
from mpsearch.models import describe, get_denoiser
from mpsearch.offload import has_offloaded_weights, model_offload_hook
from mpsearch.quantizers.candidate import timing_stand_in
from mpsearch.runtime.generation import generate, takes_prompts

# the rest of the runtime (its kernels import numba, its hooks diffusers) is imported by the measurement, not with
# the table: reading a profile's LatencyTable needs none of it

__all__ = ["LatencyTable", "measure_latency", "device_name"]


def _nan_list(a: np.ndarray) -> list:
    return np.where(np.isnan(a), None, a).tolist()


@dataclass
class LatencyTable:
    """Seconds per denoiser call: ``seconds[l, f]`` for layer ``l`` in format ``f`` as the format runs (NaN where
    the layer may not take it); ``seconds_weight_only[l, f]`` with the activations kept in full precision (only
    for formats that quantize activations; NaN elsewhere). ``meta``: torch version, threads, measured_at, calls
    per denoiser call of each layer, and how it was measured."""

    names: tuple[str, ...]
    formats: tuple[str, ...]
    seconds: np.ndarray
    seconds_weight_only: np.ndarray
    device: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.names = tuple(str(n) for n in self.names)
        self.formats = tuple(str(f) for f in self.formats)
        L, F = len(self.names), len(self.formats)
        if len(set(self.names)) != L or len(set(self.formats)) != F:
            raise UsageError("a latency table names each layer and each format once")
        if "fp" not in self.formats:
            raise UsageError(f"a latency table needs the fp column (the reference of every share), got formats "
                             f"{list(self.formats)}")
        for attr in ("seconds", "seconds_weight_only"):
            try:
                a = np.array(getattr(self, attr), dtype=float)
            except (TypeError, ValueError) as e:
                raise UsageError(f"LatencyTable.{attr} must be numbers ({e})") from None
            if a.shape != (L, F):
                raise UsageError(f"LatencyTable.{attr} has shape {a.shape}, expected ({L}, {F}) (layers x formats)")
            if (a[np.isfinite(a)] < 0).any() or np.isinf(a).any():
                raise UsageError(f"LatencyTable.{attr} holds a negative or infinite time; measure again")
            setattr(self, attr, a)
        fp = self.seconds[:, self.formats.index("fp")]
        if np.isnan(fp).any():
            missing = self.names[int(np.argmax(np.isnan(fp)))]
            raise UsageError(f"the latency table lacks the fp time of layer {missing}; every layer runs in fp: "
                             "measure again")
        if not isinstance(self.device, str) or not self.device:
            raise UsageError(f"LatencyTable.device must name the device, got {self.device!r}")
        self.meta = dict(self.meta or {})

    def column(self, fmt: str, weight_only: bool = False) -> np.ndarray:
        """(L,) seconds per denoiser call in ``fmt`` (``weight_only``: activations kept in full precision)."""
        if fmt not in self.formats:
            raise UsageError(f"the latency table has no format {fmt!r} (it has {', '.join(self.formats)}); "
                             "measure it with `mpsearch profile --latency`")
        return (self.seconds_weight_only if weight_only else self.seconds)[:, self.formats.index(fmt)]

    def totals(self) -> dict:
        """Per format (and weight-only variant): seconds summed over the layers that take it, and the ratio to
        fp's seconds over those same layers."""
        fp = self.column("fp")
        out = {}
        for fi, f in enumerate(self.formats):
            for label, col in ((f, self.seconds[:, fi]), (f"{f} weight-only", self.seconds_weight_only[:, fi])):
                ok = np.isfinite(col)
                if not ok.any():
                    continue
                base = float(fp[ok].sum())
                out[label] = {"seconds": float(col[ok].sum()), "layers": int(ok.sum()),
                              "vs_fp": float(col[ok].sum()) / base if base > 0 else None}
        return out

    def summary(self) -> dict:
        """What the CLI reports: device, versions, totals per format."""
        return {"device": self.device, "torch": self.meta.get("torch"), "threads": self.meta.get("threads"),
                "measured_at": self.meta.get("measured_at"), "layers": len(self.names),
                "fp_seconds": float(self.column("fp").sum()), "totals": self.totals()}

    def to_dict(self) -> dict:
        return {"layers": list(self.names), "formats": list(self.formats), "seconds": _nan_list(self.seconds),
                "seconds_weight_only": _nan_list(self.seconds_weight_only), "device": self.device,
                "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        try:
            nan = lambda rows: np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)  # noqa: E731
            return cls(tuple(d["layers"]), tuple(d["formats"]), nan(d["seconds"]).reshape(len(d["layers"]), -1),
                       nan(d["seconds_weight_only"]).reshape(len(d["layers"]), -1), d["device"], d.get("meta", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"not a latency table ({type(e).__name__}: {e})") from None


def device_name(device: torch.device) -> str:
    """``cpu`` or the accelerator's name (``NVIDIA H100 80GB HBM3``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Captured(Exception):
    """Raised from the denoiser's forward hook once its first call is seen: the generation stops there."""


def _capture(pipe, den, modules, names, conditions, seed, steps, guidance_scale, size):
    """One denoiser call of a real generation: each layer's first input and its calls per denoiser call."""

    inputs: dict[int, torch.Tensor] = {}
    counts = np.zeros(len(names), dtype=int)
    state = {"active": False}

    def layer_hook(li):
        def hook(module, args, output):
            if state["active"]:
                counts[li] += 1
                if li not in inputs and args and isinstance(args[0], torch.Tensor):
                    inputs[li] = args[0].detach().clone()
        return hook

    def start(*_args, **_kwargs):
        state["active"] = True

    def stop(*_args):
        raise _Captured

    hooks = [den.register_forward_pre_hook(start, with_kwargs=True), den.register_forward_hook(stop)]
    try:
        hooks += [modules[n].register_forward_hook(layer_hook(li)) for li, n in enumerate(names)]
        try:
            generate(pipe, conditions, seed, steps, guidance_scale, size)
        except _Captured:
            pass
    finally:
        for h in hooks:
            h.remove()
    if not state["active"]:
        raise MpsearchError("the pipeline never called its denoiser, so no layer input could be captured; check "
                            "the conditions and steps")
    return inputs, counts


def _median_seconds(fn, min_time: float, label: str) -> float:
    from torch.utils.benchmark import Timer

    # the real thread count (Timer defaults to 1); the default timer synchronizes an accelerator
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), label="mpsearch latency",
                  sub_label=label)
    return float(timer.blocked_autorange(min_run_time=min_time).median)


def measure_latency(pipe, info=None, *, formats=None, steps: int = 20, conditions=None, seed: int = 0,
                    guidance_scale=None, size=None, min_time: float = 0.05, progress: bool = True) -> LatencyTable:
    """Measure the latency table of ``pipe``'s denoiser on the device it is on (see the module docstring).

    ``info`` (e.g. a profile's ``ModelInfo``) fixes the layers and their eligible formats (default: ``describe``
    of the denoiser); ``formats`` the columns (default: every format some layer may take; ``fp`` is always
    first). ``conditions`` / ``seed`` / ``steps`` / ``guidance_scale`` / ``size`` set the generation whose first
    denoiser call gives each layer's input (default conditions: two labels, or one prompt). ``min_time`` is
    each measurement's least run time in seconds (``blocked_autorange(min_run_time=...)``).
    """
    from tqdm.auto import tqdm

    from mpsearch.runtime.executor import applied_plan  # lazy: not needed to read a profile or solve
    from mpsearch.runtime.qmodules import quantized_module  # lazy: not needed to read a profile or solve
    from mpsearch.runtime.steps import FixedStep  # lazy: not needed to read a profile or solve

    if isinstance(min_time, bool) or not isinstance(min_time, (int, float)) or not 0 < min_time < math.inf:
        raise UsageError(f"min_time must be a positive number of seconds, got {min_time!r}")
    den = get_denoiser(pipe)
    if applied_plan(den) is not None:
        raise UsageError("a plan is applied to this model; call handle.remove() before measuring its latency table")
    if has_offloaded_weights(den) or model_offload_hook(den) is not None:
        raise UsageError("the denoiser is offloaded (enable_model_cpu_offload / enable_sequential_cpu_offload / a "
                         "device_map), so layer timings would time the transfers; measure the latency table with the "
                         "denoiser on the device (pipe.remove_all_hooks(); pipe.to('cuda'))")
    info = info or describe(den)
    modules = dict(den.named_modules())
    for layer in info.layers:
        module = modules.get(layer.name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(layer.shape):
            raise UsageError(f"layer {layer.name} of the profile is not in this model (or has another shape); "
                             "measure the latency table on the model that was profiled")
    known = available_formats(calibrated=True)  # a variant is timed with its base format's arithmetic
    if formats is None:
        formats = [f for f in known if any(f in l.eligible for l in info.layers)]
    formats = ("fp", *[f for f in formats if f != "fp"])
    bad = [f for f in formats if f not in known]
    if bad or len(set(formats)) != len(formats):
        raise UsageError(f"latency formats {list(formats)} must be distinct names among {', '.join(known)}")
    if conditions is None:
        conditions = ["a photo of a cat"] if takes_prompts(pipe) else [0, 1]
    names = info.names
    inputs, counts = _capture(pipe, den, modules, names, conditions, seed, steps, guidance_scale, size)

    L, F = len(names), len(formats)
    seconds = np.full((L, F), np.nan)
    weight_only = np.full((L, F), np.nan)
    jobs = sum(1 + sum(1 + get_format(f).quantizes_activations for f in formats[1:] if f in layer.eligible)
               for layer in info.layers)
    bar = tqdm(total=jobs, desc="latency", unit="timing", disable=not progress)
    try:
        with torch.no_grad():
            for li, layer in enumerate(info.layers):
                module = modules[layer.name]
                x = inputs.get(li)
                calls = int(counts[li])
                variants = [(0, False, module)]
                for fi, f in enumerate(formats[1:], start=1):
                    if f not in layer.eligible:
                        continue
                    packed = timing_stand_in(f, module.weight.detach())
                    variants.append((fi, False, quantized_module(module, packed)))  # as the executor runs it
                    if get_format(f).quantizes_activations:
                        wo = quantized_module(module, packed, act_windows=[(0, 1, False)])
                        wo.step_state = FixedStep(0)  # step 0, inside the window (0, 1): activations fp
                        variants.append((fi, True, wo))
                for fi, wo_flag, m in variants:
                    if x is None or calls == 0:  # the layer does not run in a denoiser call: it costs nothing
                        value = 0.0
                    else:
                        label = f"{layer.name} {formats[fi]}{' weight-only' if wo_flag else ''}"
                        value = _median_seconds(lambda m=m, x=x: m(x), float(min_time), label) * calls
                    (weight_only if wo_flag else seconds)[li, fi] = value
                    bar.update(1)
                del variants
                inputs.pop(li, None)
    finally:
        bar.close()
    device = next((p.device for p in den.parameters()), torch.device("cpu"))
    dtype = str(next(den.parameters()).dtype).replace("torch.", "")
    meta = {"torch": str(torch.__version__), "threads": int(torch.get_num_threads()),
            "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device_type": device.type, "cpu": _cpu_name(), "dtype": dtype,
            "calls": [int(c) for c in counts], "conditions": len(list(conditions)), "seed": int(seed),
            "guidance_scale": guidance_scale, "size": size, "min_time": float(min_time),
            "timer": "torch.utils.benchmark.Timer.blocked_autorange, median"}
    return LatencyTable(names, formats, seconds, weight_only, device_name(device), meta)
