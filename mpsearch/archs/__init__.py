"""Real diffusion architectures at real size, without weights.

Each ``<name>.json`` beside this file holds a published denoiser configuration (the ``config.json`` of the
model's ``unet/`` or ``transformer/`` folder, with its source), the class diffusers builds from it and the
precision the model is usually run in. :func:`build_meta_denoiser` builds that denoiser on the ``meta`` device:
every parameter has its real shape and dtype and no storage, so the whole of a 12-billion-parameter FLUX
is described in a second and in no memory. From that, :func:`arch_report` says what each format costs and which
budgets can hold the model, and :func:`plan_without_weights` makes the plans that need no measurement.
What does need one (which layers are sensitive, and so the best plan under a tight budget) needs a profile
of the real weights: ``mpsearch profile --model DIR --prompts FILE``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from mpsearch.budget import format_bytes, parse_budget
from mpsearch.errors import UsageError
from mpsearch.formats import available_formats
from mpsearch.models import DEFAULT_ROLE_PINS, ModelInfo, Role, describe, resolve_role_pins

ARCHS_DIR = Path(__file__).resolve().parent
DEFAULT_BUDGETS = ("4GB", "8GB", "12GB")

# The role-based ladder: with the default pins in place, every other layer starts in int8, and roles move to
# 4 bits one at a time, the most robust first (FFNs, then self-attention, convolutions, then the layers that read
# the text), until the plan fits. Each step is a plan that needs no profile.
_LADDER = (Role.FFN, Role.SELF_ATTN, Role.CONV, Role.OTHER, Role.CROSS_ATTN)
_FOUR_BIT = ("nvfp4", "int4")  # NVFP4 first (W4A4 with fine blocks), INT4 where NVFP4 cannot take the shape


def available_archs() -> list[str]:
    """Names of the shipped architectures (the JSON files' stems)."""
    return sorted(p.stem for p in ARCHS_DIR.glob("*.json"))


def load_arch(name: str) -> dict:
    """The shipped description of architecture ``name``: source, denoiser class, dtype and config."""
    path = ARCHS_DIR / f"{name}.json"
    if not path.is_file():
        raise UsageError(f"unknown architecture {name!r}; expected one of {', '.join(available_archs())}")
    return json.loads(path.read_text())


def _dtype(arch: dict, dtype) -> torch.dtype:
    name = str(dtype or arch["dtype"]).removeprefix("torch.")
    aliases = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
    name = aliases.get(name, name)
    if name not in ("float16", "bfloat16", "float32"):
        raise UsageError(f"dtype {dtype!r} is not one of float16, bfloat16, float32 (or fp16, bf16, fp32)")
    return getattr(torch, name)


def build_meta_denoiser(name: str, dtype=None) -> torch.nn.Module:
    """The denoiser of architecture ``name`` on the meta device, in ``dtype`` (default: the arch's own)."""
    import diffusers

    arch = load_arch(name)
    cls = getattr(diffusers, arch["denoiser_class"])
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # config keys other classes use; the cast notice
    try:
        with torch.device("meta"):
            model = cls.from_config(arch["config"])
        return model.to(_dtype(arch, dtype)).eval()
    finally:
        diffusers.utils.logging.set_verbosity(level)


@lru_cache(maxsize=16)
def _described(name: str, dtype=None) -> tuple[ModelInfo, int]:
    model = build_meta_denoiser(name, dtype)
    return describe(model), sum(p.numel() for p in model.parameters())


def describe_arch(name: str, dtype=None) -> ModelInfo:
    """``models.describe`` of the meta-device denoiser: exact names, shapes, roles and bytes, no weights."""
    return _described(name, dtype)[0]


def _feasible(info: ModelInfo, budget: str, lo: int) -> dict:
    b = parse_budget(budget, fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes,
                     quantizable_numel=info.quantizable_numel)
    return {"budget": budget, "bytes": b.bytes, "feasible": lo <= b.bytes, "fits_fp": info.fp_bytes <= b.bytes}


def arch_report(name: str, budgets=DEFAULT_BUDGETS, dtype=None) -> dict:
    """Sizes of architecture ``name`` without weights: parameters, bytes per uniform format, the smallest and
    largest possible size, the smallest with the default pins, and which ``budgets`` are feasible."""
    arch = load_arch(name)
    info = describe_arch(name, dtype)
    params = _described(name, dtype)[1]
    uniform = {f: info.bytes_for({l.name: f for l in info.layers if f in l.eligible}) for f in available_formats()}
    lo, hi = info.size_range()
    pinned = resolve_role_pins(info, available_formats())
    lo_pinned = info.fixed_bytes + sum(
        l.nbytes(pinned[l.name]) if l.name in pinned else min(l.nbytes(f) for f in l.eligible) for l in info.layers)
    roles: dict[str, dict] = {}
    for l in info.layers:
        r = roles.setdefault(l.role.value, {"layers": 0, "params": 0, "fp_bytes": 0})
        r["layers"] += 1
        r["params"] += l.numel
        r["fp_bytes"] += l.nbytes("fp")
    return {
        "arch": name, "title": arch["title"], "source": arch["source"], "class": info.denoiser_class,
        "dtype": str(_dtype(arch, dtype)).removeprefix("torch."), "params": params,
        "layers": len(info.layers), "quantizable_params": info.quantizable_numel, "fixed_bytes": info.fixed_bytes,
        "fp_bytes": info.fp_bytes, "uniform_bytes": uniform, "min_bytes": lo, "max_bytes": hi,
        "min_bytes_default_pins": lo_pinned, "roles": roles, "fingerprint": info.fingerprint,
        "tie_groups": len(info.tie_groups), "cacheable_blocks": len(info.blocks),
        "budgets": [_feasible(info, b, lo) | {"feasible_default_pins": lo_pinned <= _feasible(info, b, lo)["bytes"]}
                    for b in budgets],
    }


def role_ladder(info: ModelInfo, role_pins=None):
    """The role-based plans, from the most precise to the smallest: [(description, {layer: format})]."""
    pinned = resolve_role_pins(info, available_formats(), role_pins)
    assignment = {l.name: pinned.get(l.name, "int8" if "int8" in l.eligible else "fp") for l in info.layers}
    steps = [("default pins, everything else int8", dict(assignment))]
    moved = []
    for role in _LADDER:
        layers = [l for l in info.layers if l.role == role and l.name not in pinned]
        if not layers:
            continue
        for l in layers:
            assignment[l.name] = next((f for f in _FOUR_BIT if f in l.eligible), assignment[l.name])
        moved.append(role.value)
        steps.append((f"{', '.join(moved)} in 4 bits (nvfp4, else int4)", dict(assignment)))
    for l in info.layers:
        if l.name not in pinned:
            assignment[l.name] = min(l.eligible, key=l.nbytes)
    steps.append(("default pins, everything else at its smallest format", dict(assignment)))
    return steps


def plan_without_weights(name: str, budget: str, dtype=None, role_pins=None) -> dict:
    """What can be planned for ``name`` under ``budget`` without weights: feasibility, the uniform plans that
    fit, and the most precise role-based plan that fits (``plan`` is that assignment, or None)."""
    info = describe_arch(name, dtype)
    b = parse_budget(budget, fp_bytes=info.fp_bytes, fixed_bytes=info.fixed_bytes,
                     quantizable_numel=info.quantizable_numel)
    lo, hi = info.size_range()
    uniform = {}
    for f in available_formats():
        nbytes = info.bytes_for({l.name: f for l in info.layers if f in l.eligible})
        uniform[f] = {"bytes": nbytes, "fits": nbytes <= b.bytes}
    ladder = [(desc, a, info.bytes_for(a)) for desc, a in role_ladder(info, role_pins)]
    chosen = next(((d, a, n) for d, a, n in ladder if n <= b.bytes), None)
    counts = None
    if chosen:
        counts = {}
        for f in chosen[1].values():
            counts[f] = counts.get(f, 0) + 1
    pins = DEFAULT_ROLE_PINS if role_pins is None else role_pins
    return {
        "arch": name, "class": info.denoiser_class, "budget": b.to_dict(), "fp_bytes": info.fp_bytes,
        "min_bytes": lo, "max_bytes": hi, "feasible": lo <= b.bytes, "uniform": uniform,
        "role_pins": {getattr(r, "value", r): f for r, f in pins.items()},
        "role_ladder": [{"step": d, "bytes": n, "fits": n <= b.bytes} for d, _, n in ladder],
        "role_plan": None if chosen is None else {"step": chosen[0], "bytes": chosen[2], "formats": counts},
        "assignment": None if chosen is None else chosen[1],
        "needs_profile": "which layers are sensitive, and so the best mixed plan for this budget and the "
                         "error any plan causes: profile the real weights (mpsearch profile --model DIR "
                         "--prompts FILE), then mpsearch solve --profile ...",
        "info": info,
    }


__all__ = ["available_archs", "load_arch", "build_meta_denoiser", "describe_arch", "arch_report",
           "plan_without_weights", "role_ladder", "format_bytes", "DEFAULT_BUDGETS"]
