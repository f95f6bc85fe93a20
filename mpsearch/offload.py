"""Models larger than the device: read weights wherever accelerate's offload hooks keep them.

diffusers' ``enable_sequential_cpu_offload()`` and a ``device_map`` with CPU or disk entries put an accelerate
``AlignDevicesHook(offload=True)`` on each module that holds parameters: the module's parameters live on the
``meta`` device except during its own forward, when the hook loads them from its ``weights_map`` (host memory
or disk) onto its ``execution_device``, and puts them back on ``meta`` after. ``enable_model_cpu_offload()``
(accelerate's ``CpuOffload``) moves a whole component to the execution device on its forward instead; its
weights stay real tensors, only their device changes.

Everything in mpsearch that reads a weight outside the module's own forward (the weights digest, the finite
check, the profiler's candidates) goes through :func:`materialized`; :func:`execution_device` is the device a
module computes on. Nothing here imports accelerate unless a module carries one of its hooks.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mpsearch.errors import ModelError

__all__ = ["accelerate_hooks", "offloads_weights", "has_offloaded_weights", "materialized", "execution_device",
           "model_offload_hook", "loaded_tensors", "offload_aware_replay"]


def accelerate_hooks(module: nn.Module) -> list:
    """The accelerate hooks on ``module`` itself (a ``SequentialHook`` unpacked), outermost first."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    inner = getattr(hook, "hooks", None)
    return list(inner) if isinstance(inner, (tuple, list)) else [hook]


def _offload_hook(module: nn.Module):
    for hook in accelerate_hooks(module):
        if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None:
            return hook
    return None


def offloads_weights(module: nn.Module) -> bool:
    """Whether an accelerate hook on ``module`` keeps its own tensors off the module between forwards."""
    return _offload_hook(module) is not None


def has_offloaded_weights(model: nn.Module) -> bool:
    """Whether any module of ``model`` has its weights offloaded (sequential offload, a disk/CPU device map)."""
    return any(offloads_weights(m) for m in model.modules())


def model_offload_hook(model: nn.Module):
    """The accelerate ``CpuOffload`` hook of ``enable_model_cpu_offload()`` on ``model``, or None."""
    for hook in accelerate_hooks(model):
        if type(hook).__name__ == "CpuOffload":
            return hook
    return None


@contextlib.contextmanager
def materialized(module: nn.Module, device=None):
    """Inside the block, ``module``'s own offloaded tensors (weight, bias) are real: loaded from the offload hook's
    ``weights_map`` onto ``device`` (default: the hook's execution device), and offloaded again on leaving, as the
    hook does around the module's forward. A module without offloaded weights is left as it is (its tensors are
    already real, wherever they are). Parameter objects may be replaced: read ``module.weight`` inside the block.
    """
    hook = _offload_hook(module)
    if hook is None:
        yield module
        return
    original = hook.execution_device
    if device is not None:
        hook.execution_device = device
    try:
        hook.pre_forward(module)
        try:
            yield module
        finally:
            hook.post_forward(module, None)
    finally:
        hook.execution_device = original


def loaded_tensors(module: nn.Module, device=None) -> dict[str, torch.Tensor]:
    """``module``'s own parameters (not its children's), detached, as real tensors: the module's own where they
    are real, else loaded as :func:`materialized` does (they stay valid after the offload hook puts the module's
    back on meta)."""
    with materialized(module, device):
        return {name: p.detach() for name, p in module.named_parameters(recurse=False) if p is not None}


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: the execution device of the first accelerate hook that names one on it or
    its submodules (offload, device map, ``enable_model_cpu_offload``), else the device of its first real tensor."""
    for m in module.modules():
        for hook in accelerate_hooks(m):
            dev = getattr(hook, "execution_device", None)
            if dev is not None:
                return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta":
            return t.device
    raise ModelError(f"{type(module).__name__} has no tensors off the meta device and no accelerate hook that says "
                     "where it runs; load its weights (or enable diffusers' offload) before using it")


@contextlib.contextmanager
def offload_aware_replay(model: nn.Module):
    """For running ``model`` again with gradients outside its pipeline (the profiler's output-sensitivity replay).

    Sequential offload: autograd would keep every layer's loaded weight (and every activation) on the execution
    device until the backward pass, the whole model at once; inside the block the tensors saved for backward
    wait in host memory instead (``torch.autograd.graph.save_on_cpu``). Model offload: the call moves the model
    to the execution device, and on leaving it goes back to the CPU if it was there, as the pipeline leaves it.
    """
    hook = model_offload_hook(model)
    first = next(iter(model.parameters()), None)
    before = first.device if first is not None else None
    with contextlib.ExitStack() as stack:
        if has_offloaded_weights(model):
            pin = execution_device(model).type == "cuda"
            stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=pin))
        try:
            yield model
        finally:
            now = next(iter(model.parameters()), None)
            if hook is not None and now is not None and now.device != before and before.type == "cpu":
                hook.init_hook(model)  # accelerate's CpuOffload: back to the CPU
