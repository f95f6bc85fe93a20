"""Install a plan on a denoiser: the one place that swaps in quantized modules, sets the step state their
activation windows read, and installs the plan's feature cache.

Both :func:`mpsearch.apply_plan` (packed weights quantized from the model's own) and
:func:`mpsearch.runtime.checkpoint.load_denoiser` (packed weights read from an exported folder) call
:func:`install`; :meth:`Installed.uninstall` takes it all off again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mpsearch.errors import PlanError
from mpsearch.formats import Packed
from mpsearch.plan import Plan
from mpsearch.runtime.cache_hooks import (
    FeatureCacheConfig,
    FeatureCacheHandle,
    apply_feature_cache,
)
from mpsearch.runtime.qmodules import quantized_module
from mpsearch.runtime.steps import StepState, acquire_step_state, release_step_state

__all__ = ["Installed", "cache_config", "install"]


def cache_config(plan: Plan) -> FeatureCacheConfig | None:
    """The plan's cache section as the runtime's feature-cache config, or None."""
    section = plan.cache_section
    return None if section is None else FeatureCacheConfig(section.unit, section.compute)


@dataclass
class Installed:
    """What :func:`install` changed: ``swaps`` (name, parent, attribute, original module) in order, the quantized
    modules, the step state (None: no activation windows) and the feature-cache handle (None: no cache)."""

    denoiser: nn.Module
    swaps: list = field(default_factory=list)
    modules: dict = field(default_factory=dict)
    step_state: StepState | None = None
    cache: FeatureCacheHandle | None = None
    removed: bool = False

    def uninstall(self, weights: dict | None = None) -> None:
        """Take the cache hooks and the step state off and put the original modules back (with ``weights``:
        name -> full-precision weight, when the originals' weights were freed). Safe to call twice."""
        if self.removed:
            return
        if self.cache is not None:
            self.cache.remove()
        if self.step_state is not None:
            release_step_state(self.denoiser)
        for name, parent, attr, original in reversed(self.swaps):
            if weights is not None:
                original.weight.data = weights[name]
            setattr(parent, attr, original)
        self.removed = True


def install(denoiser: nn.Module, plan: Plan, packed: dict[str, Packed]) -> Installed:
    """Replace each layer of ``packed`` (name -> its packed weight, the plan's non-fp layers) by a quantized
    module, give the modules with activation windows the denoiser's step state, and install the plan's feature
    cache. Either all of it is installed or, if anything fails, nothing is (the error is re-raised)."""
    quantized = {a.name for a in plan.assignments if a.format != "fp"}
    if set(packed) != quantized:
        raise PlanError(f"install got packed weights for {len(packed)} layer(s), the plan quantizes {len(quantized)}; "
                        "pass one packed weight per quantized layer")
    config = cache_config(plan)
    if config is not None:  # checked before any change: the unit's modules must exist
        config.unit.check(denoiser)
    named = dict(denoiser.named_modules())
    windows = plan.activation_windows()
    built = {name: quantized_module(named[name], p, windows.get(name, ())) for name, p in packed.items()}
    done = Installed(denoiser)
    try:
        for name, qmod in built.items():
            parent_name, _, attr = name.rpartition(".")
            parent = named[parent_name] if parent_name else denoiser
            setattr(parent, attr, qmod)
            done.swaps.append((name, parent, attr, named[name]))
            done.modules[name] = qmod
        if windows:  # activation windows read the denoiser's step
            done.step_state = acquire_step_state(denoiser)
            for qmod in built.values():
                qmod.step_state = done.step_state  # type: ignore[assignment]
        if config is not None:  # feature-cache hooks (diffusers hook registry)
            done.cache = apply_feature_cache(denoiser, config)
    except BaseException:
        done.uninstall()
        raise
    return done
