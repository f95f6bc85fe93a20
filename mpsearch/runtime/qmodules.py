"""Quantized modules that hold packed weights, shared by the profiler and the executor.

The profiler measures a layer's error with the very modules the executor later installs, so a profile
describes what the plan will run. One quantized module class per layer type (``mpsearch.models.LayerType``),
registered with :func:`register_qmodule`; :func:`quantized_module` builds the one a module's type needs.
"""

from __future__ import annotations

import torch
from torch import nn

from mpsearch.errors import PlanError
from mpsearch.formats import Packed, get_format
from mpsearch.formats.patches import im2col  # noqa: F401  (re-exported: its old home)
from mpsearch.layer_types import layer_type_of
from mpsearch.runtime import kernels
from mpsearch.runtime.steps import StepState, StepTracker  # noqa: F401  (StepTracker: deprecated, old path)

_QMODULES: dict[str, type] = {}


def register_qmodule(kind: str):
    """Class decorator: the quantized module for layers of ``kind`` (a registered ``LayerType``). The class
    provides ``from_module(module, packed, act_windows)``; ``_QuantMixin`` gives it packed buffers and the
    activation schedule."""

    def register(cls):
        if not callable(getattr(cls, "from_module", None)):
            raise PlanError(f"{cls.__name__} needs a classmethod from_module(module, packed, act_windows) to be "
                            "registered as a quantized module")
        _QMODULES[kind] = cls
        return cls

    return register


def unregister_qmodule(kind: str) -> None:
    """Forget the quantized module of ``kind`` (no error if there is none)."""
    _QMODULES.pop(kind, None)


class _QuantMixin:
    """Shared logic of quantized modules: packed buffers and the activation schedule."""

    def _init_packed(self, packed: Packed, act_windows):
        self.fmt = get_format(packed.format)
        self.weight_shape = packed.shape
        self.weight_dtype = packed.dtype
        self._keys = tuple(packed.tensors)
        for key, t in packed.tensors.items():
            self.register_buffer(f"packed_{key}", t)
        self.act_windows = act_windows  # list of (start, stop, bool) overrides
        #: the denoiser's step state (set when ``act_windows`` need the step); None: the format's default
        self.step_state: StepState | None = None
        #: keep the dequantized weight between calls (the profiler's speed-up; the executor leaves it off
        #: so that only packed weights are held)
        self.cache_dequantized = False
        self._dequantized = None
        #: device layouts the kernels derive from the packed weight (not buffers: not counted, not saved)
        self._kernel_cache = kernels.LayoutCache()

    def _apply(self, fn, *args, **kwargs):
        # moved or cast: layouts built for the old device or dtype are dropped (rebuilt on the next call)
        self._kernel_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def dequantized(self) -> torch.Tensor | None:
        """The dequantized weight if caching is on (computed once), else None (dequantize per call)."""
        if not self.cache_dequantized:
            return None
        if self._dequantized is None:
            self._dequantized = self.fmt.dequantize(self.packed())
        return self._dequantized

    def packed(self) -> Packed:
        return Packed(self.fmt.name, self.weight_shape, self.weight_dtype,
                      {k: getattr(self, f"packed_{k}") for k in self._keys})

    def quantize_activations(self) -> bool:
        if self.step_state is not None:
            step = self.step_state.step
            for start, stop, quant in self.act_windows:
                if start <= step < stop:
                    return quant and self.fmt.quantizes_activations
        return self.fmt.quantizes_activations

    def extra_repr(self) -> str:
        return f"format={self.fmt.name}, shape={tuple(self.weight_shape)}"


@register_qmodule("linear")
class QuantLinear(_QuantMixin, nn.Module):
    """A Linear whose weight lives in a packed low-bit format."""

    @classmethod
    def from_module(cls, module: nn.Linear, packed: Packed, act_windows=()) -> QuantLinear:
        return cls(packed, module.bias, act_windows)

    def __init__(self, packed: Packed, bias: nn.Parameter | None, act_windows=()):
        super().__init__()
        self._init_packed(packed, list(act_windows))
        self.in_features = packed.shape[1]
        self.out_features = packed.shape[0]
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        w = self.dequantized()
        y = kernels.linear(x.reshape(-1, x.shape[-1]), self.packed(), activations=self.quantize_activations(),
                           dequantized=None if w is None else w.reshape(w.shape[0], -1), cache=self._kernel_cache)
        y = y.reshape(*lead, self.out_features).to(x.dtype)
        return y + self.bias.to(y.dtype) if self.bias is not None else y


@register_qmodule("conv2d")
class QuantConv2d(_QuantMixin, nn.Module):
    """A Conv2d whose weight lives in a packed low-bit format (activations quantized per pixel via im2col)."""

    @classmethod
    def from_module(cls, module: nn.Conv2d, packed: Packed, act_windows=()) -> QuantConv2d:
        return cls(module, packed, module.bias, act_windows)

    def __init__(self, conv: nn.Conv2d, packed: Packed, bias: nn.Parameter | None, act_windows=()):
        super().__init__()
        self._init_packed(packed, list(act_windows))
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized()
        if not self.quantize_activations():
            return kernels.conv(x, self.packed(), self.bias, self.stride, self.padding, self.dilation,
                                dequantized=w, cache=self._kernel_cache)
        n = x.shape[0]
        y, oh, ow = kernels.patches(x, self.packed(), self.kernel_size, self.dilation, self.padding, self.stride,
                                    activations=True, dequantized=None if w is None else w.reshape(w.shape[0], -1),
                                    cache=self._kernel_cache)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(n, oh * ow, self.out_channels).transpose(1, 2).reshape(n, self.out_channels, oh, ow)


def quantized_module(module: nn.Module, packed: Packed, act_windows=()) -> nn.Module:
    """The quantized replacement of ``module`` (a layer of a registered layer type), sharing its bias.
    ``act_windows``: ``(start, stop, quantize)`` step windows that override the format's activation default."""
    lt = layer_type_of(module)
    cls = _QMODULES.get(lt.kind) if lt is not None else None
    if cls is None:
        raise PlanError(f"no quantized module for {type(module).__name__} (layer kind "
                        f"{lt.kind if lt else None!r}); register one with "
                        "mpsearch.runtime.qmodules.register_qmodule(kind)")
    return cls.from_module(module, packed, act_windows)


__all__ = ["QuantLinear", "QuantConv2d", "quantized_module", "register_qmodule", "unregister_qmodule", "im2col"]
