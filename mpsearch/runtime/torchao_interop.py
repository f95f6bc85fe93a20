"""Run a plan on torchao's kernels: each planned layer's format -> the torchao config with the same arithmetic.

    mapping = mpsearch.to_torchao(plan, pipe)                  # PlanError if a layer has no matching config
    mapping = mpsearch.to_torchao(plan, pipe, mismatch="nearest")   # or "fp": leave those layers unquantized
    mapping.apply(pipe)      # = torchao.quantization.quantize_(denoiser, FqnToConfig(mapping.configs), filter_fn=None)

Which formats coincide with torchao 0.18 (read from its sources; ``TORCHAO_FORMATS`` below; numbers in the README,
"Running a plan on torchao's kernels"; tests/runtime/test_torchao_interop.py checks them on the CPU):

- ``nvfp4`` -> ``NVFP4DynamicActivationNVFP4WeightConfig`` (W4A4): the same recipe as docs/design.md (tensor scale
  amax/(6*448) in float32, E4M3 block scale of amax_block/6/s_t, blocks of 16, E2M1 round half to even, saturating
  at 6, the activation's tensor scale from the whole activation). torchao orders the float operations differently
  (``(amax_b / 6) / s_t`` and ``x * ((1 / s_t) / bs)`` against ``amax_b / (6 * s_t)`` and ``x / (bs * s_t)``) and
  floors block scales at 2^-6, so an element exactly on a rounding tie, or a block scale at a rounding boundary,
  can round the other way; the dequantized values are otherwise bit for bit mpsearch's. Counted as coinciding.
  torchao runs it on sm100 GPUs only (``quantize_`` asserts it); the CPU checks its quantization numerics.
- ``int8`` -> ``Int8DynamicActivationInt8WeightConfig`` differs: torchao's symmetric scale is amax/127.5 with codes
  in [-128, 127] (weights and activations), mpsearch's amax/127 in [-127, 127]. Nearest only.
- ``int4`` (groups 128/64/32) -> torchao's tinygemm int4 (``Int4WeightOnlyConfig(int4_packing_format=
  "tile_packed_to_4d")`` on CUDA, bfloat16 models only; ``PrototypeInt4WeightOnlyConfig`` on the CPU) has
  mpsearch's grid (scale = (max-min)/15, zero = min + 8*scale, x^ = (q-8)*scale + zero) but keeps scale and zero in
  the model's dtype (bfloat16 on CUDA) where mpsearch stores float16. Nearest, unless ``weights="mpsearch"``.

``weights="mpsearch"`` hands mpsearch's packed int8/int4 weights to torchao's tensors instead of letting torchao
quantize: int4 on the CPU (float32/float16 models) then coincides bit for bit in the weights (torchao's kernel sums
in its own order); int8 weights coincide but torchao still quantizes the activations with amax/127.5 (nearest).

Not expressible in torchao: per-step activation windows (``overrides``: torchao quantizes a layer's activations at
every step or never) and the cache schedule (``cache``: torchao has no feature caching). A layer with activation
windows follows ``mismatch``; a plan's cache section is left out with a warning (``TorchaoMapping.not_carried``):
the quantized layers stand on their own, and the schedule can still be installed with
``mpsearch.runtime.cache_hooks.apply_feature_cache``. Conv2d layers have no torchao config here (its configs
quantize ``nn.Linear``): they follow ``mismatch`` too, and "nearest" leaves them in full precision.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from mpsearch.errors import OptionalDependencyError, PlanError, UsageError
from mpsearch.formats import get_format
from mpsearch.formats.packing import unpack_nibbles
from mpsearch.models import ModelInfo, describe, get_denoiser
from mpsearch.plan import Plan
from mpsearch.runtime.executor import activation_windows

#: the torchao release these mappings were read from and tested with
TORCHAO_VERSION = "0.18.0"

#: format family -> (coincides, torchao config, why not / how). ``coincides``: torchao's quantization has the
#: recipe of docs/design.md's formats table (see the module docstring for the float-order caveat of nvfp4)
TORCHAO_FORMATS = {
    "nvfp4": (True, "NVFP4DynamicActivationNVFP4WeightConfig (W4A4; sm100 GPUs)",
              "same recipe; torchao's float operation order and its 2^-6 floor on block scales round elements on "
              "exact ties (and block scales on rounding boundaries) the other way"),
    "int8": (False, "Int8DynamicActivationInt8WeightConfig",
             "torchao's symmetric int8 scale is amax/127.5 with codes in [-128, 127] for weights and activations, "
             "mpsearch's is amax/127 in [-127, 127]"),
    "int4": (False, "Int4WeightOnlyConfig(int4_packing_format='tile_packed_to_4d') on CUDA (bfloat16 models), "
             "PrototypeInt4WeightOnlyConfig on the CPU",
             "torchao's tinygemm int4 has mpsearch's grid (zero = min + 8*scale) but keeps scale and zero in the "
             "model's dtype (bfloat16 on CUDA), mpsearch stores float16"),
}

_MISMATCH = ("error", "nearest", "fp")


@dataclass
class TorchaoMapping:
    """What ``to_torchao`` made of a plan.

    ``configs``: module FQN -> torchao config, in the plan's order (layers the plan keeps in fp are not listed);
    ``coinciding``: the mapped layers whose torchao config has mpsearch's recipe; ``nearest``: mapped layers whose
    config does not (layer -> why); ``full_precision``: planned layers the mapping leaves unquantized (layer ->
    why); ``not_carried``: parts of the plan torchao cannot express (e.g. the cache schedule)."""

    configs: OrderedDict[str, object]
    coinciding: list[str] = field(default_factory=list)
    nearest: dict[str, str] = field(default_factory=dict)
    full_precision: dict[str, str] = field(default_factory=dict)
    not_carried: list[str] = field(default_factory=list)
    device: str = "cuda"

    def fqn_config(self):
        """``torchao.quantization.FqnToConfig`` of ``configs`` (``ModuleFqnToConfig`` is its old name)."""
        from torchao.quantization import FqnToConfig

        return FqnToConfig(OrderedDict(self.configs))

    def apply(self, pipe_or_model) -> nn.Module:
        """Quantize the denoiser in place with torchao (not removable: reload the model to undo); returns it."""
        from torchao.quantization import quantize_

        denoiser = get_denoiser(pipe_or_model)
        nvfp4 = [n for n, c in self.configs.items() if type(c).__name__.startswith("NVFP4")]
        if nvfp4 and not _sm100(denoiser):
            raise PlanError(f"torchao runs NVFP4 W4A4 on sm100 GPUs only and {len(nvfp4)} mapped layer(s) are "
                            f"nvfp4 (e.g. {nvfp4[0]!r}), the model is not on one; move it to such a GPU, or use "
                            "mpsearch.apply_plan, which emulates NVFP4 anywhere")
        if self.configs:
            quantize_(denoiser, self.fqn_config(), filter_fn=None)
        return denoiser

    def summary(self) -> str:
        return (f"{len(self.configs)} layer(s) mapped to torchao ({len(self.coinciding)} with mpsearch's recipe, "
                f"{len(self.nearest)} nearest), {len(self.full_precision)} left in full precision"
                + (f"; not carried: {', '.join(self.not_carried)}" if self.not_carried else ""))


def _sm100(denoiser: nn.Module) -> bool:
    p = next(denoiser.parameters(), None)
    if p is None or p.device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(p.device) >= (10, 0)


def _torchao():
    """torchao's config classes, or an error that names the package to install."""
    try:
        from torchao.prototype.mx_formats.inference_workflow import NVFP4DynamicActivationNVFP4WeightConfig
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig
        from torchao.quantization.quantize_.workflows import Int4PackingFormat
    except ImportError as e:
        raise OptionalDependencyError(
            f"to_torchao needs torchao (tested with {TORCHAO_VERSION}): pip install torchao=={TORCHAO_VERSION} "
            f"({type(e).__name__}: {e})") from None
    return {"nvfp4": NVFP4DynamicActivationNVFP4WeightConfig, "int8": Int8DynamicActivationInt8WeightConfig,
            "int4_cuda": Int4WeightOnlyConfig, "int4_cpu": PrototypeInt4WeightOnlyConfig,
            "int4_packing": Int4PackingFormat}


def _family(fmt: str) -> str:
    return getattr(get_format(fmt), "family", None) or fmt


def _windows_text(windows) -> str:
    return ", ".join(f"{'quant' if q else 'fp'} in steps [{a}, {b})" for a, b, q in windows)


def to_torchao(plan: Plan, denoiser=None, *, mismatch: str = "error", device: str | None = None,
               weights: str = "torchao", ignore_weights: bool = False) -> TorchaoMapping:
    """Map ``plan``'s layers to torchao configs (``TorchaoMapping.configs``: module FQN -> config), usable as
    ``quantize_(denoiser, FqnToConfig(configs), filter_fn=None)`` or ``mapping.apply(pipe)``.

    ``denoiser`` (a pipeline or the module; optional): the plan is checked against it (layers, fingerprint,
    weights unless ``ignore_weights``) and its layer kinds and shapes are checked against torchao's configs;
    its device picks the int4 config. Without it, layers are taken to be Linear and ``device`` (default "cuda")
    decides. ``mismatch``: what to do with a layer whose format has no torchao config with mpsearch's arithmetic
    (int8, int4, Conv2d layers, per-step activation windows): "error" (default; a PlanError naming the layers
    and why), "nearest" (torchao's nearest config; Conv2d layers and shapes torchao refuses stay fp), or "fp"
    (leave them unquantized). Every choice is recorded in the result.

    ``weights``: "torchao" (default): torchao's own configs quantize the full-precision weights; "mpsearch":
    int8 and int4 layers get a config (``MpsearchWeightsConfig``) that quantizes with mpsearch's format and hands
    the packed weight to torchao's tensor (``Int8Tensor``, the CPU's ``Int4OpaqueTensor``), so torchao's kernels
    run mpsearch's exact weights: int4 on the CPU (float32 and float16 models) then coincides; int8 stays nearest
    (torchao still quantizes the activations with amax/127.5). nvfp4 keeps torchao's config (the recipe is one).
    """
    if not isinstance(plan, Plan):
        raise PlanError(f"to_torchao expects a mpsearch.Plan, got {type(plan).__name__}; use Plan.load(path)")
    if mismatch not in _MISMATCH:
        raise UsageError(f"mismatch must be one of {', '.join(_MISMATCH)}; got {mismatch!r}")
    if weights not in ("torchao", "mpsearch"):
        raise UsageError(f"weights must be 'torchao' or 'mpsearch'; got {weights!r}")
    if device not in (None, "cpu", "cuda"):
        raise UsageError(f"device must be 'cpu' or 'cuda' (it picks the int4 config); got {device!r}")
    ao = _torchao()
    info: ModelInfo | None = None
    if denoiser is not None:
        den = get_denoiser(denoiser)
        info = describe(den)
        plan.check_model(info)
        if not ignore_weights:
            plan.check_weights(den, info)
        if device is None:
            p = next(den.parameters(), None)
            device = "cuda" if p is not None and p.device.type == "cuda" else "cpu"
    device = device or "cuda"
    windows = activation_windows(plan)
    result = TorchaoMapping(configs=OrderedDict(), device=device)
    problems: dict[str, list[str]] = {}  # why -> layers

    for name, fmt in plan.layers.items():
        if fmt == "fp":
            continue
        family = _family(fmt)
        layer = info.layer(name) if info is not None else None
        why = None          # why this layer's torchao config is not mpsearch's arithmetic
        unmappable = None   # why no torchao config can take it at all
        if layer is not None and layer.kind != "linear":
            unmappable = f"{layer.kind} layers: torchao's configs quantize nn.Linear only"
        elif family == "nvfp4" and layer is not None and layer.shape[0] % 16:
            unmappable = "nvfp4 with an output dim that is not a multiple of 16: torchao's NVFP4 refuses it"
        elif family == "int4" and device == "cuda" and layer is not None and layer.dtype != "bfloat16":
            unmappable = (f"int4 on CUDA with {layer.dtype} weights: torchao's tinygemm int4 takes bfloat16 only "
                          "(cast the model to bfloat16, or map for the CPU)")
        elif family not in TORCHAO_FORMATS:
            unmappable = f"format {fmt}: no torchao counterpart"
        elif weights == "mpsearch" and family == "int4" and device == "cpu":
            if layer is not None and layer.dtype == "bfloat16":
                why = (f"{fmt} with bfloat16 weights: torchao's CPU int4 holds scale and zero in the weight's dtype, "
                       "which cannot hold mpsearch's float16 values exactly")
        elif weights == "mpsearch" and family == "int8":
            why = (f"{fmt} activations: torchao quantizes them with amax/127.5 into [-128, 127], mpsearch with "
                   "amax/127 into [-127, 127] (the weights are mpsearch's)")
        elif not TORCHAO_FORMATS[family][0]:
            why = f"{fmt}: {TORCHAO_FORMATS[family][2]}"
            if family == "int4" and device == "cpu":
                why += " (weights='mpsearch' runs mpsearch's own int4 weights on torchao's CPU kernel)"
        # a window changes something only where it turns a W8A8/W4A4 layer's activations to fp
        per_step = [w for w in windows.get(name, []) if not w[2]] if get_format(fmt).quantizes_activations else []
        if unmappable is None and per_step:
            step_why = (f"activation windows ({_windows_text(per_step)}): torchao quantizes a layer's "
                        "activations at every step or never")
            why = f"{why}; {step_why}" if why else step_why
        reason = unmappable or why
        if reason is not None:
            problems.setdefault(reason, []).append(name)
            if mismatch == "fp" or unmappable is not None:
                result.full_precision[name] = reason
                continue
            if mismatch == "nearest":
                result.nearest[name] = reason
        packed = weights == "mpsearch" and (family == "int8" or (family == "int4" and device == "cpu"))
        result.configs[name] = _weights_config()(fmt=fmt) if packed else _config(ao, family, fmt, device)
        if reason is None:
            result.coinciding.append(name)

    if problems and mismatch == "error":
        n = sum(len(v) for v in problems.values())
        parts = "; ".join(f"{len(v)} layer(s) (e.g. {v[0]!r}): {why}" for why, v in problems.items())
        raise PlanError(f"{n} planned layer(s) have no torchao config with mpsearch's arithmetic: {parts}; pass "
                        "mismatch='nearest' to use torchao's nearest config or mismatch='fp' to leave them in "
                        "full precision")
    if plan.cache is not None:
        result.not_carried.append("cache")
        warnings.warn("the plan's cache schedule has no torchao counterpart and is not part of the mapping; "
                      "install it with mpsearch.runtime.cache_hooks.apply_feature_cache if you want it",
                      UserWarning, stacklevel=2)
    return result


def _config(ao: dict, family: str, fmt: str, device: str):
    if family == "nvfp4":
        # the Python quantization path (no MSLK triton kernel), whose numerics the tests compare
        return ao["nvfp4"](use_triton_kernel=False)
    if family == "int8":
        return ao["int8"]()
    group = get_format(fmt).group
    if device == "cpu":
        return ao["int4_cpu"](group_size=group)
    return ao["int4_cuda"](group_size=group, int4_packing_format=ao["int4_packing"].TILE_PACKED_TO_4D)


_WEIGHTS_CONFIG = []


def _weights_config():
    """``MpsearchWeightsConfig``: a torchao config (made once, when torchao is there) whose handler quantizes a
    Linear's weight with mpsearch's format and wraps the packed weight in torchao's tensor for that format."""
    if _WEIGHTS_CONFIG:
        return _WEIGHTS_CONFIG[0]
    from torchao.core.config import AOBaseConfig
    from torchao.quantization.transform_module import register_quantize_module_handler

    @dataclass
    class MpsearchWeightsConfig(AOBaseConfig):
        """torchao's kernel on mpsearch's quantized weight (``fmt``: int8, int4, int4-g64, int4-g32)."""

        fmt: str = "int8"

    @register_quantize_module_handler(MpsearchWeightsConfig)
    def _transform(module: nn.Module, config: MpsearchWeightsConfig, *, parameter_name: str = "weight") -> nn.Module:
        weight = getattr(module, parameter_name)
        tensor = _torchao_weight(config.fmt, weight.detach())
        setattr(module, parameter_name, nn.Parameter(tensor, requires_grad=False))
        return module

    _WEIGHTS_CONFIG.append(MpsearchWeightsConfig)
    return MpsearchWeightsConfig


def _torchao_weight(fmt: str, w: torch.Tensor):
    """mpsearch's packed ``w`` as torchao's weight tensor: int8 -> ``Int8Tensor`` (per-row, dynamic per-token
    activations), int4 -> ``Int4OpaqueTensor`` (the CPU's tinygemm int4 kernel)."""
    packed = get_format(fmt).quantize(w)
    if _family(fmt) == "int8":
        from torchao.quantization.granularity import PerRow
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor, QuantizeTensorToInt8Kwargs

        return Int8Tensor(packed.tensors["qweight"], packed.tensors["scale"][:, None], [1, w.shape[1]], w.dtype,
                          act_quant_kwargs=QuantizeTensorToInt8Kwargs(granularity=PerRow()))
    from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor
    from torchao.quantization.utils import pack_tinygemm_scales_and_zeros

    if w.device.type != "cpu":
        raise PlanError(f"weights='mpsearch' runs int4 on torchao's CPU kernel; this weight is on {w.device.type}: "
                        "map it with weights='torchao' for CUDA")
    codes = unpack_nibbles(packed.tensors["qweight"]).reshape(w.shape).to(torch.int32)
    qdata = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    sz = pack_tinygemm_scales_and_zeros(packed.tensors["scale"].to(w.dtype), packed.tensors["zero"].to(w.dtype),
                                        w.dtype)
    return Int4OpaqueTensor(qdata, sz, [1, get_format(fmt).group], w.shape)


__all__ = ["to_torchao", "TorchaoMapping", "TORCHAO_FORMATS", "TORCHAO_VERSION"]
