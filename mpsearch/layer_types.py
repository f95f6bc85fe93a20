"""Layer types: which torch modules mpsearch can quantize, why one cannot be, and what a call costs.

Core (imports no stage): ``describe`` finds candidate layers through this registry; the runtime registers the
quantized module of each kind (``mpsearch.runtime.qmodules.register_qmodule``). Adding a layer type is a
:class:`LayerType` subclass here (eligibility, MACs) and a quantized module class there (construction).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from mpsearch.errors import ModelError

__all__ = ["LayerType", "register_layer_type", "unregister_layer_type", "layer_type_of", "layer_type",
           "LinearType", "Conv2dType"]


class LayerType:
    """A kind of layer mpsearch can quantize: which modules it matches, why one cannot be quantized, its MACs.

    Subclass it, set ``kind`` (the name recorded in profiles and plans) and ``module_type``, override
    ``unsupported`` and ``macs`` as needed, and register it with :func:`register_layer_type`; the runtime's
    quantized module for the kind is registered with ``mpsearch.runtime.qmodules.register_qmodule(kind)``.
    A layer type needs a floating-point ``weight`` whose first dimension is the output dimension and whose
    flattened rest is the input dimension (the formats' group and block layout).
    """

    kind: str = ""
    module_type: type = nn.Module

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is a layer of this type."""
        return isinstance(module, self.module_type)

    def unsupported(self, module: nn.Module) -> str | None:
        """Why ``module`` cannot be quantized at all (one line), or None."""
        return None

    def macs(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
        """Multiply-accumulates of one call with input ``x`` and output ``y``: by default each output element
        takes one input row of the weight (Linear: tokens x out x in; Conv2d: pixels x out x in x kh x kw)."""
        weight = cast(torch.Tensor, module.weight)
        return y.numel() * (weight.numel() // weight.shape[0])


LAYER_TYPES: dict[str, LayerType] = {}


def register_layer_type(cls: type[LayerType]) -> type[LayerType]:
    """Class decorator: make a :class:`LayerType` known to :func:`describe` (later registrations are tried
    first, so a subclass of a known module type gets its own layer type)."""
    if not (isinstance(cls, type) and issubclass(cls, LayerType)) or not cls.kind:
        raise ModelError(f"register_layer_type takes a LayerType subclass with a kind, got {cls!r}")
    LAYER_TYPES.pop(cls.kind, None)
    LAYER_TYPES[cls.kind] = cls()
    return cls


def unregister_layer_type(kind: str) -> None:
    """Forget the layer type ``kind`` (no error if it is not registered)."""
    LAYER_TYPES.pop(kind, None)


def layer_type_of(module: nn.Module) -> LayerType | None:
    """The layer type of ``module``: an exact module type match first, then the latest registered match."""
    types = list(LAYER_TYPES.values())
    for lt in types:
        if type(module) is lt.module_type:
            return lt
    for lt in reversed(types):
        if lt.matches(module):
            return lt
    return None


def layer_type(kind: str) -> LayerType:
    """The registered layer type named ``kind``."""
    try:
        return LAYER_TYPES[kind]
    except KeyError:
        raise ModelError(f"unknown layer kind {kind!r}; known: {', '.join(LAYER_TYPES)} "
                         "(register new ones with mpsearch.layer_types.register_layer_type)") from None


@register_layer_type
class LinearType(LayerType):
    """``nn.Linear`` (and subclasses)."""

    kind = "linear"
    module_type = nn.Linear


@register_layer_type
class Conv2dType(LayerType):
    """``nn.Conv2d`` with zero padding and no groups (the quantized conv runs it as im2col + matmul)."""

    kind = "conv2d"
    module_type = nn.Conv2d

    def unsupported(self, module: nn.Module) -> str | None:
        """Why ``module`` cannot be quantized: a grouped conv, a padding mode other than zeros, or string padding."""
        if module.groups != 1:
            return f"grouped conv (groups={module.groups})"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
        if isinstance(module.padding, str):
            return f"padding={module.padding!r}"
        return None
