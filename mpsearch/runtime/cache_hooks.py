"""Feature-cache hooks, installed through diffusers' hook registry (named, removable, stateful).

One technique, in the shape of diffusers' own cache hooks: :class:`FeatureCacheConfig` (the unit and the
per-step schedule), :class:`FeatureCacheState` (the cached features of the current generation),
hooks, and :func:`apply_feature_cache`, which returns a handle whose ``remove()`` takes every hook off and
leaves the modules as they were (no registry, no ``forward`` attribute left behind).

Steps come from the denoiser's one step state (:mod:`mpsearch.runtime.steps`): a new generation clears the
cache; another call of the same step (a pipeline that runs classifier-free guidance as two calls) gets its own
cache slot. A batched CFG call (one batch of 2N) simply caches features of batch 2N.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from diffusers.hooks import ModelHook
from torch import nn

from mpsearch.cache_units import CacheUnit
from mpsearch.errors import PlanError
from mpsearch.runtime.steps import acquire_step_state, register_hook, release_step_state, unregister_hook

HOOK_STEP = "mpsearch_cache_step"
HOOK_BLOCK = "mpsearch_cache_block"


@dataclass(frozen=True)
class FeatureCacheConfig:
    """The unit whose features are reused and, per step, whether it is computed (True) or reused (False)."""

    unit: CacheUnit
    compute: tuple[bool, ...]

    def __post_init__(self):
        if not isinstance(self.unit, CacheUnit):
            raise PlanError(f"FeatureCacheConfig.unit must be a CacheUnit, got {type(self.unit).__name__}")
        compute = tuple(self.compute)
        if not compute or not all(isinstance(c, bool) for c in compute):
            raise PlanError(f"cache compute must be a non-empty list of booleans (one per step), got {list(compute)!r}")
        if not compute[0]:
            raise PlanError("cache compute[0] is false, but step 0 has nothing to reuse; compute step 0")
        object.__setattr__(self, "compute", compute)


class FeatureCacheState:
    """Per generation: the step, the call within the step, and the cached outputs per call slot."""

    def __init__(self):
        self.reset()
        self.record = None  # optional callable(step, slot, feature tensor) for measuring runs
        self.probe = False  # measuring runs: the step hook leaves step and reuse as they are
        #: measuring runs: callable(state, forward, args, kwargs) -> output, called instead of the denoiser's
        #: forward once the step and the reuse decision are set (to record outputs or replay recorded ones)
        self.intercept = None
        self.stats = {"computed": 0, "reused": 0, "fallback": 0, "generations": 0}

    def reset(self):
        self.step = -1
        self.slot = 0
        self.reuse = False
        self.outputs: dict = {}  # (slot, module name) -> output at the last full computation
        self.inputs: dict = {}  # slot -> input of the range (transformer-residual)
        self.residual: dict = {}  # slot -> residual of the range


class _StepHook(ModelHook):
    """On the denoiser, inside its step-state hook: decides compute/reuse for this call from its step."""

    _is_stateful = True

    def __init__(self, state: FeatureCacheState, config: FeatureCacheConfig):
        super().__init__()
        self.state, self.config = state, config
        self.steps = None  # the denoiser's StepState, set once installed
        self._generation = None
        self._warned = False

    def pre_forward(self, module, *args, **kwargs):
        st = self.state
        if st.probe:  # a measuring run re-evaluates this step with chosen cached features; st.reuse is set
            return args, kwargs
        steps = self.steps
        if steps.generation != self._generation:  # a new generation: clear the cache
            st.reset()
            self._generation = steps.generation
            st.stats["generations"] += 1
        st.step, st.slot = steps.step, steps.slot
        step = max(st.step, 0)
        if step >= len(self.config.compute):
            if not self._warned:
                warnings.warn(f"the cache schedule covers {len(self.config.compute)} steps but the pipeline runs "
                              f"more; steps from {step} on are computed in full (schedule for this step count)",
                              stacklevel=2)
                self._warned = True
            st.reuse = False
        else:
            st.reuse = not self.config.compute[step]
        st.stats["reused" if st.reuse else "computed"] += 1
        return args, kwargs

    def new_forward(self, module, *args, **kwargs):
        st = self.state
        if st.intercept is not None and not st.probe:
            return st.intercept(st, self.fn_ref.original_forward, args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)

    def reset_state(self, module):
        self.state.reset()
        self._generation = None
        return module


def _hidden(args, kwargs):
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


class _DeepHook(ModelHook):
    """unet-deep: each module of the deep path returns its output from the last full computation."""

    def __init__(self, state: FeatureCacheState, name: str, is_feature: bool):
        super().__init__()
        self.state, self.name, self.is_feature = state, name, is_feature

    def new_forward(self, module, *args, **kwargs):
        st = self.state
        key = (st.slot, self.name)
        if st.reuse:
            if key in st.outputs:
                return st.outputs[key]
            st.stats["fallback"] += 1
        out = self.fn_ref.original_forward(*args, **kwargs)
        st.outputs[key] = out
        if self.is_feature and st.record is not None:
            st.record(st.step, st.slot, out)
        return out


class _ResidualHook(ModelHook):
    """transformer-residual: the range is skipped and input + cached residual comes out of its last block."""

    def __init__(self, state: FeatureCacheState, first: bool, last: bool):
        super().__init__()
        self.state, self.first, self.last = state, first, last

    def new_forward(self, module, *args, **kwargs):
        st = self.state
        hidden = _hidden(args, kwargs)
        res = st.residual.get(st.slot)
        if st.reuse and res is not None and res.shape == hidden.shape:
            return hidden + res if self.last else hidden
        if st.reuse and self.first:
            st.stats["fallback"] += 1
            st.reuse = False  # no usable cache for this call: compute the whole range
        if self.first:
            st.inputs[st.slot] = hidden
        out = self.fn_ref.original_forward(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise PlanError("a transformer-residual cache needs blocks that return one tensor; "
                            f"{type(module).__name__} returned {type(out).__name__}")
        if self.last:
            st.residual[st.slot] = out - st.inputs[st.slot]
            if st.record is not None:
                st.record(st.step, st.slot, st.residual[st.slot])
        return out


class FeatureCacheHandle:
    """What :func:`apply_feature_cache` returns: ``state`` (counters, for reports), ``steps`` (the denoiser's
    step state; hold it while re-evaluating a step) and ``remove()``."""

    def __init__(self, denoiser, state):
        self._denoiser = denoiser
        self._modules = []  # [(module, hook name)]
        self._steps_acquired = False
        self.state = state
        self.steps = None
        self.removed = False

    def remove(self) -> None:
        """Take every cache hook off; modules get back their own forward. Safe to call twice."""
        if self.removed:
            return
        for module, name in reversed(self._modules):
            unregister_hook(module, name)
        if self._steps_acquired:
            release_step_state(self._denoiser)
        if hasattr(self._denoiser, "_diffusers_hook"):
            self._denoiser._diffusers_hook.invalidate_child_registries_cache()
        self.state.reset()
        self.removed = True

    def __enter__(self) -> FeatureCacheHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_feature_cache(denoiser: nn.Module, config: FeatureCacheConfig) -> FeatureCacheHandle:
    """Install the feature cache described by ``config`` on ``denoiser``; returns a removable handle."""
    unit = config.unit
    unit.check(denoiser)
    named = dict(denoiser.named_modules())
    state = FeatureCacheState()
    step_hook = _StepHook(state, config)
    targets = [(denoiser, HOOK_STEP, step_hook)]
    for i, name in enumerate(unit.modules):
        if unit.kind == "unet-deep":
            hook = _DeepHook(state, name, i == len(unit.modules) - 1)
        else:
            hook = _ResidualHook(state, i == 0, i == len(unit.modules) - 1)
        targets.append((named[name], f"{HOOK_BLOCK}:{name}", hook))
    for module, name, _ in targets:
        reg = getattr(module, "_diffusers_hook", None)
        if reg is not None and name in reg.hooks:
            raise PlanError(f"a feature cache is already installed on {type(module).__name__}; remove it first")
    handle = FeatureCacheHandle(denoiser, state)
    try:
        for module, name, hook in targets:
            register_hook(module, hook, name)  # inside accelerate's offload hook, if any
            handle._modules.append((module, name))
        # after the cache's own hook: the step state moves outside it, so each call's step is set first
        step_hook.steps = handle.steps = acquire_step_state(denoiser)
        handle._steps_acquired = True
    except BaseException:
        handle.remove()
        raise
    denoiser._diffusers_hook.invalidate_child_registries_cache()
    return handle


__all__ = ["FeatureCacheConfig", "FeatureCacheState", "FeatureCacheHandle", "apply_feature_cache",
           "HOOK_STEP", "HOOK_BLOCK"]
