"""The denoising step of each denoiser call: one state per denoiser, read by everything that acts per step.

A named diffusers hook (:data:`HOOK_NAME`, in the denoiser's ``HookRegistry``) maps each call's ``timestep`` to a
step index: a timestep higher than the last one starts a new generation (step 0); a lower one is the next step;
the same one again is another call of the same step (a pipeline that runs classifier-free guidance as two calls),
counted by ``slot``. Quantized modules (activation windows), the profiler's probes, the call recorder and the
feature cache all read this one :class:`StepState`. Users share it: :func:`acquire_step_state` installs it or
reuses the one there (reference counted) and moves it to the outside of the hook chain, so it runs before every
other hook of the denoiser; :func:`release_step_state` takes it off with its last user. Reading ``state.step`` is
an attribute read; updating it costs one comparison per denoiser call.

:class:`FixedStep` always says one step: for a quantized module measured alone, outside any denoiser.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

__all__ = ["HOOK_NAME", "StepState", "FixedStep", "StepTracker", "acquire_step_state", "release_step_state",
           "step_state", "current_step_state", "timestep_of", "first_tensor", "register_hook", "unregister_hook"]

HOOK_NAME = "mpsearch_step_state"


def timestep_of(args, kwargs) -> float | None:
    """The timestep of a denoiser call (keyword ``timestep`` or the second positional argument), as a float."""
    t = kwargs.get("timestep")
    if t is None:
        t = args[1] if len(args) > 1 else None
        if t is None:
            return None
    if isinstance(t, torch.Tensor):
        return float(t) if t.dim() == 0 else float(t.reshape(-1)[0])
    return float(t)


def first_tensor(out) -> torch.Tensor | None:
    """The main tensor of a module's output: the tensor itself, ``out.sample`` (diffusers' output classes) or the
    first element of a tuple or list; None if there is none."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


class StepState:
    """The current generation's step (``-1`` before the first call), the call within the step (``slot``), the
    number of generations started (``generation``) and the last timestep."""

    def __init__(self):
        self.generation = 0
        self.held = False
        self.reset()

    def reset(self) -> None:
        """Forget the current generation: the next call is step 0."""
        self.step = -1
        self.slot = 0
        self.timestep = None

    def advance(self, t: float | None) -> None:
        """Account for one denoiser call with timestep ``t`` (None: a call without a timestep, ignored)."""
        if t is None or self.held:
            return
        last = self.timestep
        if last is None or t > last:
            self.step, self.slot = 0, 0
            self.generation += 1
        elif t < last:
            self.step += 1
            self.slot = 0
        else:
            self.slot += 1
        self.timestep = t

    @contextlib.contextmanager
    def hold(self):
        """Inside the block, denoiser calls do not advance the state (re-evaluating the current step)."""
        held, self.held = self.held, True
        try:
            yield self
        finally:
            self.held = held


class FixedStep(StepState):
    """A step state that always says ``step`` (default 0): for modules measured alone, outside a denoiser, e.g.
    a quantized module whose activation window ``(0, 1, False)`` then keeps its activations in full precision."""

    def __init__(self, step: int = 0):
        self._fixed = int(step)
        super().__init__()

    def reset(self) -> None:
        self.step, self.slot, self.timestep = self._fixed, 0, None

    def advance(self, t) -> None:
        return None


class StepTracker(StepState):
    """Deprecated: a torch forward pre-hook (``with_kwargs=True``) over :class:`StepState`. Use
    :func:`acquire_step_state` (one shared state per denoiser) instead."""

    def __init__(self):
        warnings.warn("StepTracker is deprecated; use mpsearch.runtime.steps.acquire_step_state(denoiser), the one "
                      "step state per denoiser", DeprecationWarning, stacklevel=2)
        super().__init__()

    def __call__(self, module, args, kwargs):
        self.advance(timestep_of(args, kwargs))
        return None


class _StepHook(ModelHook):
    """The hook that keeps a denoiser's :class:`StepState`; ``users`` counts who acquired it."""

    _is_stateful = True

    def __init__(self):
        super().__init__()
        self.state = StepState()
        self.users = 0

    def pre_forward(self, module, *args, **kwargs):
        self.state.advance(timestep_of(args, kwargs))
        return args, kwargs

    def reset_state(self, module):
        self.state.reset()
        return module


def _remove(registry: HookRegistry, name: str) -> None:
    """``registry.remove_hook(name)`` that also works when an outer hook replaces the forward (``new_forward``):
    diffusers 0.42 would point that hook's ``forward`` (its ``new_forward``) at the removed hook's inner forward,
    dropping it from the chain; here the outer hook's ``original_forward`` gets the inner forward instead."""
    order = registry._hook_order
    if name not in registry.hooks:
        return
    i = order.index(name)
    outer = registry._fn_refs[i + 1] if i + 1 < len(order) else None
    if outer is None or outer.original_forward is None:
        registry.remove_hook(name, recurse=False)
        return
    ref = registry._fn_refs[i]
    inner = ref.original_forward if ref.original_forward is not None else ref.forward
    outer_forward = outer.forward
    registry.remove_hook(name, recurse=False)
    outer.forward, outer.original_forward = outer_forward, inner


@contextlib.contextmanager
def _inside_accelerate(module: nn.Module):
    """Within the block, ``module.forward`` is the forward *inside* accelerate's hook, if the module has one
    (``enable_model_cpu_offload``, sequential offload, a device map), so that the diffusers hooks registered or
    removed in the block sit inside accelerate's. Accelerate removes and re-adds its hooks by restoring the
    ``forward`` it wrapped (diffusers' ``maybe_free_model_hooks`` does so after every offloaded generation): hooks
    outside it would be dropped from the chain, silently; hooks inside it survive."""
    if not (hasattr(module, "_hf_hook") and "_old_forward" in module.__dict__ and "forward" in module.__dict__):
        yield
        return
    outer = module.__dict__["forward"]
    module.forward = module._old_forward
    try:
        yield
    finally:
        module._old_forward = module.forward  # the registry's forward (or the module's own, once none is left)
        module.forward = outer


def register_hook(module: nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` as ``name`` in ``module``'s diffusers hook registry, inside any accelerate hook."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    with _inside_accelerate(module):
        registry.register_hook(hook, name)


def unregister_hook(module: nn.Module, name: str) -> None:
    """Remove the hook ``name`` from ``module``'s registry (wherever it is in the chain); a registry left empty
    is removed with the ``forward`` attribute it left on the module, so the module is as before any hook."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    with _inside_accelerate(module):
        _remove(registry, name)
        if registry.hooks:
            return
        del module._diffusers_hook
        fwd = module.__dict__.get("forward")
        if getattr(fwd, "__self__", None) is module and getattr(fwd, "__func__", None) is type(module).forward:
            del module.forward


def current_step_state(module: nn.Module) -> StepState | None:
    """The step state installed on ``module``, or None."""
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook(HOOK_NAME) if registry is not None else None
    return hook.state if hook is not None else None


def acquire_step_state(denoiser: nn.Module) -> StepState:
    """The denoiser's step state, installed if absent (else shared, one more user) and moved to the outside of its
    hook chain, so that hooks registered before this call see each call's step. Pair with
    :func:`release_step_state`."""
    registry = HookRegistry.check_if_exists_or_initialize(denoiser)
    hook = registry.get_hook(HOOK_NAME)
    if hook is None:
        hook = _StepHook()
        register_hook(denoiser, hook, HOOK_NAME)
    elif registry._hook_order[-1] != HOOK_NAME:
        with _inside_accelerate(denoiser):
            _remove(registry, HOOK_NAME)  # the same hook and state, re-registered outermost
            registry.register_hook(hook, HOOK_NAME)
    hook.users += 1
    return hook.state


def release_step_state(denoiser: nn.Module) -> None:
    """One user fewer; the last one takes the hook off the denoiser."""
    registry = getattr(denoiser, "_diffusers_hook", None)
    hook = registry.get_hook(HOOK_NAME) if registry is not None else None
    if hook is None:
        return
    hook.users -= 1
    if hook.users <= 0:
        unregister_hook(denoiser, HOOK_NAME)


@contextlib.contextmanager
def step_state(denoiser: nn.Module):
    """``with step_state(denoiser) as state:`` acquires the denoiser's step state and releases it on exit."""
    state = acquire_step_state(denoiser)
    try:
        yield state
    finally:
        release_step_state(denoiser)
