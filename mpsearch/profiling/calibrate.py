"""The calibration pass: each candidate layer's input statistics, for the calibrated quantizer variants.

Before a profile measures a variant (``nvfp4:clip``, ``int8:smooth``, ``int4:gptq``), one full-precision
generation of all the profile's conditions with its first seed (the batch of one profile unit), at its steps,
guidance and size, records per layer: the mean square of each input column, the largest magnitude per input
channel and, for the layers a ``gptq`` candidate needs it for, the input second-moment matrix. Rows (tokens,
or a conv's im2col rows) are a seeded random subset of at most :data:`CALIBRATION_ROWS` per call, so the pass
costs one generation plus a small fraction. The statistics are stored in the profile once; every unit's
variants are quantized with them, and so are the plan's (:mod:`mpsearch.quantizers`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm.auto import tqdm

from mpsearch.errors import ProfileError, UsageError
from mpsearch.formats import get_format
from mpsearch.formats.base import all_finite
from mpsearch.formats.variant import VARIANTS, candidate_names, uses_hessian
from mpsearch.models import ModelInfo, get_denoiser
from mpsearch.offload import loaded_tensors
from mpsearch.quantizers import Calibration, CalibrationAccumulator
from mpsearch.runtime.generation import generate

#: how many of the profile's conditions (prompts or labels) the calibration generation runs, from the start;
#: None: all. Every one counts: on the default DiT, GPTQ calibrated on all 10 classes instead of the first 4
#: cut the same plan's test-seed image error to 0.30-0.41x (docs/benchmarks.md, "Quantizer variants").
CALIBRATION_CONDITIONS: int | None = None
#: at most this many input rows per layer call go into the statistics (seeded random subset)
CALIBRATION_ROWS = 256


def calibrated_layers(info: ModelInfo, formats) -> dict[int, bool]:
    """Layer index -> whether its hessian is needed, for the layers with an eligible calibrated candidate."""
    out: dict[int, bool] = {}
    for li, layer in enumerate(info.layers):
        cands = [f for f in formats if f in layer.eligible and getattr(get_format(f), "calibrated", False)]
        if cands:
            out[li] = any(uses_hessian(get_format(f)) for f in cands)
    return out


class _Recorder:
    def __init__(self, index: int, module: torch.nn.Module, hessian: bool, name: str = ""):
        self.name = name
        self.module = module
        self.conv = isinstance(module, torch.nn.Conv2d)
        w = loaded_tensors(module)["weight"]
        in_cols = int(w[0].numel())
        channels = int(w.shape[1])
        self.acc = CalibrationAccumulator(in_cols, channels, in_cols // channels, hessian=hessian)
        self.gen = torch.Generator().manual_seed(2_000_029 * (index + 1))

    def _pick(self, n: int) -> torch.Tensor | None:
        if n <= CALIBRATION_ROWS:
            return None
        return torch.randperm(n, generator=self.gen)[:CALIBRATION_ROWS]

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        x = inputs[0].detach()
        if not all_finite(x):
            raise ProfileError(f"layer {self.name}'s input is not finite (NaN/inf) in the calibration run, so its "
                               "variants cannot be calibrated; check the model in full precision (weights, dtype, "
                               "conditions) before profiling")
        if self.conv:
            m = self.module
            cols = torch.nn.functional.unfold(x.float(), m.kernel_size, m.dilation, m.padding, m.stride)
            rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N*L, C*kh*kw), the weight's column order
        else:
            rows = x.reshape(-1, x.shape[-1])
        pick = self._pick(rows.shape[0])
        if pick is not None:
            rows = rows[pick.to(rows.device)]
        self.acc.add(rows.float().cpu())


def calibrate(pipe, info: ModelInfo, config, layers: dict[int, bool], *, progress: bool = True
              ) -> dict[int, Calibration]:
    """Run the calibration generation (see the module) and return layer index -> Calibration for ``layers``
    (index -> whether to record the hessian, :func:`calibrated_layers`)."""
    denoiser = get_denoiser(pipe)
    modules = dict(denoiser.named_modules())
    recorders = {li: _Recorder(li, modules[info.layers[li].name], hess, info.layers[li].name)
                 for li, hess in layers.items()}
    handles = [recorders[li].module.register_forward_hook(r) for li, r in recorders.items()]
    bar = tqdm(total=config.steps, desc="calibrate", unit="step", disable=not progress)
    def tick(*_) -> None:  # returns None: a forward hook that returns a value replaces the output
        bar.update(1)

    handles.append(denoiser.register_forward_hook(tick))
    try:
        generate(pipe, config.conditions[:CALIBRATION_CONDITIONS], config.seeds[0], config.steps,
                 config.guidance_scale, config.size)
    finally:
        bar.close()
        for h in handles:
            h.remove()
    return {li: r.acc.result() for li, r in recorders.items()}


#: the variants a profile measures when not told: on both default models' profiles the ILP chose only these at
#: every evidence budget, and its plans with every variant were the same (docs/benchmarks.md, "Quantizer
#: variants"); clip, smooth and awq (``all``) cost profile time there and won no layer. They remain the only
#: variants of a layer with more than MAX_HESSIAN_COLS input columns, so ``all`` is the set for such layers.
DEFAULT_VARIANTS = ("gptq", "smooth-gptq")
#: the variant sets ``--variants`` names; ``default`` is what a profile measures when not told
VARIANT_SETS = {"none": (), "default": DEFAULT_VARIANTS, "all": VARIANTS}


def parse_variants(spec) -> tuple[str, ...]:
    """``none``, ``default``, ``all`` or variant names (a comma-separated string or a sequence) -> variant names."""
    if isinstance(spec, str) and spec in VARIANT_SETS:
        return VARIANT_SETS[spec]
    names = [v.strip() for v in spec.split(",")] if isinstance(spec, str) else [str(v) for v in spec]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise UsageError(f"variants must be none, default, all or names from {', '.join(VARIANTS)}; got {spec!r}; "
                         "pass e.g. --variants clip,smooth")
    return tuple(dict.fromkeys(names))


def choose_variants(config, variants=None, *, large: bool = False):
    """(config with the calibrated candidates added to its formats, a line saying what was chosen or None).

    ``variants=None`` (the default): :data:`DEFAULT_VARIANTS` for a model profiled exactly; none for a large model
    profiled by the automatic mode (the calibration pass is one more generation and every variant one more
    candidate per call, beyond the time target), said in the line. A config whose formats already name
    variants is kept as it is."""
    if any(":" in f for f in config.formats):
        return config, None
    line = None
    if variants is None:
        if large:
            variants = "none"
            line = ("no quantizer variants at this size (their calibration pass and candidates would exceed the time "
                    f"target; --variants default measures {', '.join(DEFAULT_VARIANTS)}, --variants all "
                    f"{', '.join(VARIANTS)})")
        else:
            variants = "default"
    names = parse_variants(variants)
    if not names:
        return config, line
    formats = tuple(candidate_names(config.formats, names))
    return replace(config, formats=formats), line
