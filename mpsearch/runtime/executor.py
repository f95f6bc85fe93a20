"""Apply a plan to a pipeline: packed low-bit weights, run-time activation quantization, removable.

``apply_plan`` replaces each planned layer by a quantized module that holds only the packed weight (the
full-precision weight is moved off the model to a stash: a temporary safetensors file for a model on the
CPU, host memory for a model on an accelerator), so the denoiser's parameters and buffers take exactly
``plan.predicted_bytes``. ``handle.remove()`` puts the original modules and weights back, bit for bit; the
handle is also a context manager (``with apply_plan(pipe, plan): ...`` restores on leaving the block).
"""

from __future__ import annotations

import os
import tempfile
import warnings
import weakref
from dataclasses import dataclass

import torch

from mpsearch.errors import PlanError
from mpsearch.formats import get_format
from mpsearch.formats.kernel_errors import is_out_of_memory
from mpsearch.models import describe, get_denoiser, measured_bytes
from mpsearch.offload import has_offloaded_weights
from mpsearch.plan import Plan
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear, quantized_module
from mpsearch.cache_units import CacheUnit
from mpsearch.runtime.cache_hooks import FeatureCacheConfig, apply_feature_cache
from mpsearch.runtime.steps import acquire_step_state, release_step_state

_HANDLE_ATTR = "_mpsearch_plan_handle"


@dataclass(frozen=True)
class LayerReport:
    name: str
    format: str
    bytes_before: int
    bytes_after: int


class _Stash:
    """Holds full-precision weights while a plan is applied: on disk (safetensors) or in host memory."""

    def __init__(self, mode: str):
        self.mode = mode
        self.path = None
        self.memory: dict[str, torch.Tensor] = {}
        self.devices: dict[str, torch.device] = {}
        self.layouts: dict[str, torch.Tensor] = {}

    def put(self, tensors: dict[str, torch.Tensor]) -> None:
        self.devices = {k: t.device for k, t in tensors.items()}
        # shape, dtype and strides of each weight (meta tensors hold no data): take() rebuilds this layout
        self.layouts = {k: t.detach().to("meta") for k, t in tensors.items()}
        if self.mode == "disk":
            from safetensors.torch import save_file

            fd, self.path = tempfile.mkstemp(prefix="mpsearch-stash-", suffix=".safetensors")
            os.close(fd)
            # never leave the file behind: deleted on remove(), or when the stash is collected or Python exits
            self._finalizer = weakref.finalize(self, _unlink, self.path)
            save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, self.path)
        else:
            self.memory = {k: t.detach().to("cpu", copy=True) if t.device.type != "cpu" else t.detach()
                           for k, t in tensors.items()}

    def take(self) -> dict[str, torch.Tensor]:
        if self.mode == "disk":
            from safetensors.torch import load_file

            # load_file's tensors are views of a private mmap of the (soon deleted) file, only 8-byte aligned: copy
            # each into fresh memory laid out like the original weight. An 8-byte-aligned weight changes the CPU
            # GEMV kernel's rounding (batch-1 linears), so generations would differ by float ULPs after remove()
            # although the state_dict is bit-identical.
            loaded = load_file(self.path)
            out = {k: torch.empty_like(self.layouts[k], device=self.devices[k]).copy_(t) for k, t in loaded.items()}
            del loaded
            self.discard()
            return out
        else:
            out, self.memory = self.memory, {}
        return {k: t.to(self.devices[k]) for k, t in out.items()}

    def discard(self) -> None:
        if self.path:
            _unlink(self.path)
        self.path = None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _restore(swaps, weights) -> None:
    """Put the original modules back, with their full-precision weights (``weights``: name -> tensor)."""
    for name, parent, attr, original in reversed(swaps):
        original.weight.data = weights[name]
        setattr(parent, attr, original)


def applied_plan(pipe_or_model) -> "PlanHandle | None":
    """The handle of the plan applied to the pipeline's denoiser (or module), or None if none is applied."""
    return getattr(get_denoiser(pipe_or_model), _HANDLE_ATTR, None)


class PlanHandle:
    """What ``apply_plan`` returns: a per-layer ``report``, ``cache`` (the feature-cache handle, or None) and
    ``remove()``, which restores the model. A context manager: leaving a ``with`` block calls ``remove()``, also
    when the block raises."""

    def __init__(self, denoiser, swaps, stash, report, step_state=None):
        self._denoiser = denoiser
        self._swaps = swaps  # list of (name, parent, attr, original module)
        self._stash = stash
        self.report: list[LayerReport] = report
        self.step_state = step_state  # the denoiser's step state while activation windows need it
        self.cache = None
        self.removed = False

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.report)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.report)

    def remove(self) -> None:
        """Restore the original modules and weights, bit for bit. Safe to call twice."""
        if self.removed:
            return
        weights = self._stash.take() if self._swaps else {}
        if self.cache is not None:
            self.cache.remove()
        if self.step_state is not None:
            release_step_state(self._denoiser)
        _restore(self._swaps, weights)
        if getattr(self._denoiser, _HANDLE_ATTR, None) is self:
            delattr(self._denoiser, _HANDLE_ATTR)
        self.removed = True

    def __enter__(self) -> "PlanHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def activation_windows(plan: Plan) -> dict[str, list]:
    """Per layer, the plan's activation overrides as ``(start, stop, quantize)`` step windows."""
    out: dict[str, list] = {}
    for ov in plan.overrides:
        start, stop = ov["steps"]
        for name, mode in ov["activations"].items():
            out.setdefault(name, []).append((start, stop, mode == "quant"))
    return out


def apply_plan(pipe_or_model, plan: Plan, *, stash: str = "auto", ignore_weights: bool = False,
               check_weights: bool | None = None) -> PlanHandle:
    """Apply ``plan`` to a pipeline's denoiser (or to the module itself) and return a removable handle, also a
    context manager (``with apply_plan(pipe, plan): ...`` restores the model on leaving the block).

    ``stash`` says where the full-precision weights wait until ``remove()``: ``"disk"`` (a temporary
    safetensors file), ``"memory"`` (host RAM), or ``"auto"`` (disk for a CPU model, host RAM otherwise).
    A plan that records the weights it was made from (``plan.weights``) is refused for other weights unless
    ``ignore_weights=True`` (CLI: ``--ignore-weights``; ``check_weights=False`` is its deprecated spelling).
    The model is either fully planned or, if anything fails, left untouched.
    """
    if check_weights is not None:
        warnings.warn("apply_plan(check_weights=...) is deprecated; use ignore_weights=True (as the CLI's "
                      "--ignore-weights) instead of check_weights=False", DeprecationWarning, stacklevel=2)
        ignore_weights = ignore_weights or not check_weights
    if not isinstance(plan, Plan):
        raise PlanError(f"apply_plan expects a mpsearch.Plan, got {type(plan).__name__}; use Plan.load(path)")
    denoiser = get_denoiser(pipe_or_model)
    if getattr(denoiser, _HANDLE_ATTR, None) is not None:
        raise PlanError("a plan is already applied to this model; call handle.remove() before applying another")
    if has_offloaded_weights(denoiser):
        raise PlanError("the denoiser's weights are offloaded by accelerate (enable_sequential_cpu_offload, or a "
                        "device_map with cpu/disk entries), which apply_plan cannot quantize or restore; apply the "
                        "plan without it and use pipe.enable_model_cpu_offload() if the planned model must be offloaded")
    info = describe(denoiser)
    plan.check_model(info)
    if not ignore_weights:
        plan.check_weights(denoiser, info)
    cache_config = None
    if plan.cache is not None:  # checked before any change: the unit's modules must exist

        cache_config = FeatureCacheConfig(CacheUnit.from_dict(plan.cache["unit"]), tuple(plan.cache["compute"]))
        cache_config.unit.check(denoiser)
    if stash not in ("auto", "disk", "memory"):
        raise PlanError(f"stash must be auto, disk or memory; got {stash!r}; pass one of those")
    modules = dict(denoiser.named_modules())
    windows = activation_windows(plan)

    # 1. quantize everything first: a failure here leaves the model untouched
    built, report = [], []
    for name, fmt_name in plan.layers.items():
        module = modules[name]
        layer = info.layer(name)
        before = layer.nbytes("fp")
        if fmt_name == "fp":
            report.append(LayerReport(name, "fp", before, before))
            continue
        try:
            packed = get_format(fmt_name).quantize(module.weight.detach())
        except Exception as e:  # noqa: BLE001 - re-raised with the layer's name
            if is_out_of_memory(e):  # not a problem of the plan: the caller may free memory and retry
                raise
            raise PlanError(f"cannot quantize layer {name!r} to {fmt_name}: {e}") from None
        qmod = quantized_module(module, packed, windows.get(name, ()))
        built.append((name, module, qmod))
        report.append(LayerReport(name, fmt_name, before, packed.nbytes))
    device_types = {m.weight.device.type for _, m, _ in built}
    mode = stash if stash != "auto" else ("disk" if device_types <= {"cpu"} else "memory")
    store = _Stash(mode)
    store.put({name: module.weight for name, module, _ in built})

    # 2. swap modules in; free the full-precision weights
    swaps = []
    handle = PlanHandle(denoiser, swaps, store, report)
    try:
        for name, module, qmod in built:
            parent_name, _, attr = name.rpartition(".")
            parent = modules[parent_name] if parent_name else denoiser
            setattr(parent, attr, qmod)
            swaps.append((name, parent, attr, module))
        if windows:  # activation windows read the denoiser's step
            handle.step_state = acquire_step_state(denoiser)
            for _, _, qmod in built:
                qmod.step_state = handle.step_state
        if cache_config is not None:  # feature-cache hooks (diffusers hook registry); removed with the rest
            handle.cache = apply_feature_cache(denoiser, cache_config)
        for _, module, _ in built:
            module.weight.data = torch.empty(0, dtype=module.weight.dtype, device=module.weight.device)
    except BaseException:
        if handle.step_state is not None:
            release_step_state(denoiser)
        _restore(swaps, store.take())
        store.discard()
        raise
    setattr(denoiser, _HANDLE_ATTR, handle)
    return handle


__all__ = ["apply_plan", "applied_plan", "PlanHandle", "LayerReport", "QuantLinear", "QuantConv2d", "measured_bytes"]
