"""Find the quantizable layers of a diffusers denoiser: exact names, kinds, shapes, roles, tie groups.

Everything here is recorded by exact module name (FQN relative to the denoiser), so the profile and
the plan never guess names at apply time.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import blake3
import torch
from torch import nn

from mpsearch.errors import ModelError
from mpsearch.formats import available_formats, get_format
from mpsearch.formats.base import all_finite
from mpsearch.layer_types import (  # noqa: F401 (also here)
    LAYER_TYPES,
    LayerType,
    layer_type,
    layer_type_of,
    register_layer_type,
    unregister_layer_type,
)
from mpsearch.offload import materialized


class Role(str, enum.Enum):
    """What a layer does in the network."""

    SELF_ATTN = "self_attn"
    CROSS_ATTN = "cross_attn"
    FFN = "ffn"
    CONV = "conv"
    TIME_EMBED = "time_embed"
    COND_EMBED = "cond_embed"
    MODULATION = "modulation"
    IN_PROJ = "in_proj"
    OUT_PROJ = "out_proj"
    OTHER = "other"


# first match wins; patterns are searched in the full module name
_ROLE_RULES: tuple[tuple[str, Role], ...] = (
    (r"(^|\.)(time_embedding|timestep_embedder|time_proj|time_emb_proj|time_text_embed\.timestep)", Role.TIME_EMBED),
    (r"(^|\.)(class_embedding|class_embedder|text_embedder|context_embedder|add_embedding|guidance_embedder|"
     r"caption_projection|time_text_embed\.text|adaln_single\.emb)", Role.COND_EMBED),
    (r"(^|\.)(norm1|norm1_context|norm_out|norm|adaln_single)\.(linear|emb|proj)", Role.MODULATION),
    # DiT's final AdaLN: proj_out_1 maps the condition to the last shift/scale (proj_out_2 is the output)
    (r"^(adaln_single\.linear|scale_shift_table|proj_out_1$)", Role.MODULATION),
    (r"^(conv_in|pos_embed\.proj|x_embedder|proj_in|patch_embed\.proj)$", Role.IN_PROJ),
    (r"^(conv_out|proj_out(_\d+)?|norm_out\.linear)$", Role.OUT_PROJ),
    (r"(^|\.)attn2\.", Role.CROSS_ATTN),
    # joint attention (SD3, FLUX): the text stream's own q/k/v and output projections
    (r"(^|\.)attn\.(add_[qkv]_proj|to_add_out)$", Role.CROSS_ATTN),
    (r"(^|\.)(ff|ff_context|mlp|proj_mlp)(\.|$)", Role.FFN),
    # FLUX single block: one projection for the attention output and the MLP down-projection together
    (r"(^|\.)single_transformer_blocks\.\d+\.proj_out$", Role.FFN),
    # a UNet spatial transformer's pointwise in/out projections (1x1 conv, or Linear in SDXL)
    (r"(^|\.)attentions\.\d+\.(proj_in|proj_out)$", Role.CONV),
    (r"(^|\.)(attn\d?|attention|attentions\.\d+)\.", Role.SELF_ATTN),
)


def classify_role(name: str, module: nn.Module, parent: nn.Module | None = None) -> Role:
    """The role of a layer from its exact name and type (diffusers naming conventions).

    ``parent`` (the module that holds the layer, e.g. a diffusers ``Attention``) refines the name: an ``attn2``
    that is not a cross-attention (SD3.5's second image self-attention) is ``self_attn``.
    """
    if getattr(parent, "is_cross_attention", None) is False and re.search(r"(^|\.)attn2\.", name):
        return Role.SELF_ATTN
    for pattern, role in _ROLE_RULES:
        if re.search(pattern, name):
            return role
    return Role.CONV if isinstance(module, nn.Conv2d) else Role.OTHER


def get_denoiser(pipe_or_model: object) -> nn.Module:
    """The UNet or transformer of a pipeline, or the module itself."""
    for attr in ("transformer", "unet", "denoiser"):
        mod = getattr(pipe_or_model, attr, None)
        if isinstance(mod, nn.Module):
            return mod
    if isinstance(pipe_or_model, nn.Module):
        return pipe_or_model
    raise ModelError(
        "expected a diffusers pipeline with a 'transformer' or 'unet', or a torch module; "
        f"got {type(pipe_or_model).__name__}"
    )


@dataclass(frozen=True)
class LayerInfo:
    """One candidate layer: exact name, kind, weight shape and dtype, role, which formats it can take."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    role: Role
    eligible: tuple[str, ...]
    ineligible: dict = field(default_factory=dict)  # format -> reason

    @property
    def numel(self) -> int:
        """Elements of the weight."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    def why_not(self, fmt: str) -> str | None:
        """None if the layer may take ``fmt`` (a format or calibrated variant), else the reason. A variant is
        eligible where its base format is and its own shape rule holds (gptq: at most 2304 input columns)."""
        if fmt in self.eligible:
            return None
        base, _, variant = fmt.partition(":")
        if variant and base in self.eligible:
            return get_format(fmt).why_ineligible(self.shape)
        return self.ineligible.get(fmt) or self.ineligible.get(base) or "not eligible"

    def nbytes(self, fmt: str) -> int:
        """Exact bytes of this layer's weight in ``fmt`` (scales included)."""
        return get_format(fmt).weight_bytes(self.shape, getattr(torch, self.dtype))

    def to_dict(self) -> dict:
        """The layer as a JSON/YAML-ready mapping (shape and lists as lists, role as its value)."""
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
                "role": self.role.value, "eligible": list(self.eligible), "ineligible": dict(self.ineligible)}


@dataclass(frozen=True)
class ModelInfo:
    """The quantizable layers of a denoiser and the bytes that never change."""

    denoiser_class: str
    layers: tuple[LayerInfo, ...]
    fixed_bytes: int
    tie_groups: tuple[tuple[str, ...], ...]
    blocks: tuple[str, ...]  # cacheable blocks, in execution order

    @property
    def names(self) -> tuple[str, ...]:
        """The candidate layers' names, in discovery order."""
        return tuple(layer.name for layer in self.layers)

    def layer(self, name: str) -> LayerInfo:
        """The candidate layer called ``name`` (KeyError if there is none)."""
        return self._by_name()[name]

    def _by_name(self) -> dict[str, LayerInfo]:
        cache = self.__dict__.get("_by_name_cache")
        if cache is None:
            cache = {layer.name: layer for layer in self.layers}
            object.__setattr__(self, "_by_name_cache", cache)
        return cache

    @property
    def fingerprint(self) -> str:
        """A digest of the denoiser class and every candidate layer's name, kind and shape."""
        payload = json.dumps([self.denoiser_class, [(l.name, l.kind, list(l.shape)) for l in self.layers]])
        return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:24]

    @property
    def quantizable_numel(self) -> int:
        """Elements of all candidate weights together (the denominator of a bits-per-weight budget)."""
        return sum(layer.numel for layer in self.layers)

    @property
    def fp_bytes(self) -> int:
        """The denoiser's size at full precision."""
        return self.bytes_for({})

    def bytes_for(self, assignment: dict) -> int:
        """Exact denoiser bytes when each layer takes ``assignment.get(name, 'fp')``."""
        return self.fixed_bytes + sum(l.nbytes(assignment.get(l.name, "fp")) for l in self.layers)

    def size_range(self) -> tuple[int, int]:
        """(smallest, largest) possible denoiser bytes over all eligible assignments."""
        lo = self.fixed_bytes + sum(min(l.nbytes(f) for f in l.eligible) for l in self.layers)
        hi = self.fixed_bytes + sum(max(l.nbytes(f) for f in l.eligible) for l in self.layers)
        return lo, hi


# Layers known to be fragile, kept at higher precision unless the user pins otherwise (README, "Default pins").
# The time/condition embedders and the first and last projections are small and sit on every path: SVDQuant,
# TensorRT-ModelOpt's diffusers recipes and MixDQ keep them in 16 bits. AdaLN modulation is large in DiT-style
# models (a sixth of FLUX) and its errors shift every token of a block at once; INT8 keeps it near-lossless.
DEFAULT_ROLE_PINS: dict[Role, str] = {
    Role.TIME_EMBED: "fp",
    Role.COND_EMBED: "fp",
    Role.IN_PROJ: "fp",
    Role.OUT_PROJ: "fp",
    Role.MODULATION: "int8",
}


def resolve_role_pins(info: ModelInfo, formats: Collection[str],
                      role_pins: Mapping[Role | str, str] | None = None) -> dict[str, str]:
    """Per-layer pins from role pins: {layer name: format}. ``role_pins=None`` means ``DEFAULT_ROLE_PINS``.

    A role pinned to a format that is not among ``formats`` or that the layer cannot take falls back to ``fp``
    (the conservative choice), so a role pin never makes a layer less precise than asked.
    """
    pins = DEFAULT_ROLE_PINS if role_pins is None else {Role(r): f for r, f in role_pins.items()}
    out = {}
    for layer in info.layers:
        fmt = pins.get(layer.role)
        if fmt is not None:
            out[layer.name] = fmt if fmt in formats and fmt in layer.eligible else "fp"
    return out


_TIE_SETS = (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj"))


def _tie_groups(names: list[str]) -> list[tuple[str, ...]]:
    """Layers that read one input: q/k/v of a self-attention; k/v of a cross-attention."""
    present = set(names)
    groups: list[tuple[str, ...]] = []
    parents = sorted({n.rsplit(".", 1)[0] for n in names if "." in n})
    for parent in parents:
        for tie_set in _TIE_SETS:
            members: tuple[str, ...] = tie_set
            if re.search(r"(^|\.)attn2$", parent) and members[0] == "to_q":
                members = members[1:]  # cross-attn: k and v read the text, q reads the image
            group = tuple(f"{parent}.{m}" for m in members if f"{parent}.{m}" in present)
            block = parent.rsplit(".", 1)[0] if parent.endswith(".attn") else None
            if members[0] == "to_q" and block and f"{block}.proj_mlp" in present:
                group += (f"{block}.proj_mlp",)  # FLUX single block: q/k/v and the MLP read one normed input
            if len(group) > 1:
                groups.append(group)
    return groups


def cacheable_blocks(denoiser: nn.Module) -> list[str]:
    """Blocks whose outputs a cache can reuse, in execution order (exact module names)."""
    out: list[str] = []
    for attr in ("down_blocks", "mid_block", "up_blocks", "transformer_blocks", "single_transformer_blocks"):
        mod = getattr(denoiser, attr, None)
        if isinstance(mod, nn.ModuleList):
            out.extend(f"{attr}.{i}" for i in range(len(mod)))
        elif isinstance(mod, nn.Module):
            out.append(attr)
    return out


def describe(pipe_or_model: object, formats: Sequence[str] | None = None) -> ModelInfo:
    """Discover the candidate layers of a pipeline's denoiser (or of a module)."""
    denoiser = get_denoiser(pipe_or_model)
    fmts = [get_format(f) for f in (formats or available_formats())]
    layers: list[LayerInfo] = []
    weight_ids = set()
    modules = dict(denoiser.named_modules())
    for name, module in modules.items():
        lt = layer_type_of(module)
        if lt is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        kind = lt.kind
        shape = tuple(module.weight.shape)
        reasons: dict[str, str] = {}
        blocked = lt.unsupported(module)
        if not module.weight.dtype.is_floating_point:
            blocked = f"weight dtype {module.weight.dtype}"
        eligible = ["fp"]
        for f in fmts:
            if f.name == "fp":
                continue
            reason = blocked or f.why_ineligible(shape)
            if reason is None:
                eligible.append(f.name)
            else:
                reasons[f.name] = reason
        dtype = str(module.weight.dtype).removeprefix("torch.")
        parts = name.split(".")
        parent = modules.get(".".join(parts[:parts.index("attn2") + 1])) if "attn2" in parts else None
        role = classify_role(name, module, parent)
        layers.append(LayerInfo(name, kind, shape, dtype, role, tuple(eligible), reasons))
        weight_ids.add(id(module.weight))
    if not layers:
        raise ModelError(f"{type(denoiser).__name__} has no layers to quantize (known layer kinds: "
                         f"{', '.join(LAYER_TYPES)}; register others with mpsearch.layer_types.register_layer_type)")
    fixed = 0
    seen = set()
    for t in list(denoiser.parameters()) + list(denoiser.buffers()):
        if id(t) in seen or id(t) in weight_ids:
            continue
        seen.add(id(t))
        fixed += t.numel() * t.element_size()
    names = [l.name for l in layers]
    return ModelInfo(type(denoiser).__name__, tuple(layers), fixed, tuple(_tie_groups(names)),
                     tuple(cacheable_blocks(denoiser)))


def measured_bytes(pipe_or_model: object) -> int:
    """Bytes the denoiser's parameters and buffers take right now (each tensor counted once)."""
    denoiser = get_denoiser(pipe_or_model)
    seen, total = set(), 0
    for t in list(denoiser.parameters()) + list(denoiser.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


#: the digest schemes weights_digest knows: "blake3" (one BLAKE3 stream over every layer, hashed by the
#: blake3 library's SIMD, multithreaded tree)
DIGEST_SCHEMES = ("blake3",)
#: schemes of unreleased development versions, no longer computed: a file recording one must be regenerated
RETIRED_DIGEST_SCHEMES = ("sha256t", "sha256")


def _layer_bytes(w: torch.Tensor) -> memoryview:
    return w.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data


def check_digest_scheme(scheme: str) -> None:
    """Raise ModelError (one line) unless ``weights_digest`` computes digests in ``scheme``."""
    if scheme in RETIRED_DIGEST_SCHEMES:
        raise ModelError(f"the weights digest was recorded in the retired scheme {scheme!r}; this mpsearch computes "
                         f"only {', '.join(DIGEST_SCHEMES)}: regenerate the profile (`mpsearch profile`) and the plan "
                         "(`mpsearch solve`) from it")
    if scheme not in DIGEST_SCHEMES:
        raise ModelError(f"unknown weights digest scheme {scheme!r} (this mpsearch knows "
                         f"{', '.join(DIGEST_SCHEMES)}); it was recorded by a newer mpsearch: upgrade mpsearch")


def weights_digest(pipe_or_model: object, names: Sequence[str] | None = None, *, scheme: str = "blake3") -> str:
    """A digest of the candidate layers' weights (name, dtype, shape and every byte), in layer order.

    The fingerprint says which layers a model has; this says whether their weights are the ones a profile
    measured, so a plan is not applied to a fine-tuned or re-trained model by mistake. ``names`` (default:
    ``describe``'s layers) chooses them. The scheme ``blake3`` hashes one stream (each layer's name, dtype,
    shape, then its bytes) with BLAKE3 on all cores (the blake3 library: SIMD and a multithreaded hash tree).
    """
    check_digest_scheme(scheme)
    denoiser = get_denoiser(pipe_or_model)
    modules = dict(denoiser.named_modules())
    names = describe(denoiser).names if names is None else names
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for name in names:
        with materialized(modules[name], "cpu"):  # offloaded weights (accelerate) read where they are kept
            w = _digest_weight(modules[name], name)
            h.update(json.dumps([name, str(w.dtype), list(w.shape)]).encode())
            h.update(_layer_bytes(w))
    return f"{scheme}:" + h.hexdigest()[:24]


def same_weights(recorded: str, pipe_or_model: object, names: Sequence[str] | None = None) -> tuple[bool, str]:
    """(whether the model's weights are those of the digest ``recorded``, the model's digest in its scheme)."""
    scheme = recorded.split(":", 1)[0] if isinstance(recorded, str) and ":" in recorded else "?"
    now = weights_digest(pipe_or_model, names, scheme=scheme)
    return now == recorded, now


def _digest_weight(module: nn.Module, name: str) -> torch.Tensor:
    w = cast(torch.Tensor, module.weight).detach()
    if w.device.type == "meta":
        raise ModelError(f"layer {name}'s weight is on the meta device and no accelerate offload hook on it "
                         "holds its values; load the model's weights before digesting or profiling it")
    return w


def check_finite_weights(pipe_or_model: object) -> None:
    """Raise ModelError naming the first parameter of the denoiser that holds NaN or inf (offloaded weights are
    read where accelerate keeps them, one module at a time)."""
    for prefix, module in get_denoiser(pipe_or_model).named_modules():
        with materialized(module, "cpu"):
            for pname, p in module.named_parameters(recurse=False):
                if p.device.type != "meta" and not all_finite(p):
                    bad = int((~torch.isfinite(p)).sum())
                    name = f"{prefix}.{pname}" if prefix else pname
                    raise ModelError(f"{name} has {bad} NaN/inf value(s), so the model is broken; fix or reload its "
                                     "weights before profiling or quantizing it")
