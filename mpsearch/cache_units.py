"""Cacheable units: what a cache reuses, per architecture, by exact module name.

* ``unet-deep`` (DeepCache): a UNet with ``down_blocks``, ``mid_block`` and as many ``up_blocks``. The unit at
  skip branch ``b`` is the deep path below ``down_blocks.b``: ``down_blocks.(b+1)..``, ``mid_block`` and
  ``up_blocks.0 .. up_blocks.(D-2-b)``. On a reuse step only the shallow path (``down_blocks.0..b`` and
  ``up_blocks.(D-1-b)..``) runs; the features entering ``up_blocks.(D-1-b)`` (the output of the last deep
  up block) come from the last full computation.
* ``transformer-residual``: a range ``transformer_blocks.i .. j`` of a transformer whose blocks return one
  tensor. On a reuse step the range is skipped and its residual (output of block ``j`` minus input of block
  ``i``) from the last full computation is added to its input. The first block is always computed (it sees
  the new timestep), and so is the last one when there are at least three.

A unit lists its modules in execution order; the last one's output (or the range's residual) is the reused
feature. Names are exact, recorded in the plan, and checked against the model when the plan is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpsearch.errors import ModelError, PlanError

KINDS = ("unet-deep", "transformer-residual")


@dataclass(frozen=True)
class CacheUnit:
    """One cacheable unit: a name, its kind and the exact names of the modules skipped on reuse steps."""

    name: str
    kind: str
    modules: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PlanError(f"cache unit kind {self.kind!r} is unknown; expected one of {', '.join(KINDS)}")
        if not self.modules or not all(isinstance(m, str) and m for m in self.modules):
            raise PlanError(f"cache unit {self.name!r} must list at least one module name, got {list(self.modules)!r}")
        object.__setattr__(self, "modules", tuple(self.modules))

    @property
    def feature(self) -> str:
        """The module whose output (unet-deep) or range residual (transformer-residual) is reused."""
        return self.modules[-1]

    def to_dict(self) -> dict:
        """The plan's ``cache.unit`` record: ``{name, kind, modules}``."""
        return {"name": self.name, "kind": self.kind, "modules": list(self.modules)}

    @classmethod
    def from_dict(cls, d: object, where: str = "cache.unit") -> CacheUnit:
        """The unit a ``cache.unit`` record ``d`` describes; PlanError naming ``where`` when it is malformed."""
        if not isinstance(d, dict) or set(d) != {"name", "kind", "modules"}:
            raise PlanError(f"{where} must have exactly the keys name, kind and modules; got {d!r}")
        if not isinstance(d["name"], str) or not isinstance(d["modules"], list):
            raise PlanError(f"{where} needs a string name and a list of module names; got {d!r}")
        return cls(d["name"], d["kind"], tuple(d["modules"]))

    def check(self, denoiser: nn.Module) -> None:
        """Raise PlanError unless every module of the unit exists in ``denoiser``."""
        names = dict(denoiser.named_modules())
        missing = [m for m in self.modules if m not in names]
        if missing:
            raise PlanError(f"cache unit {self.name!r} names module {missing[0]!r}, which the model does not have; "
                            "schedule the cache for this model (`mpsearch inspect` lists its units)")


def cache_units(denoiser: nn.Module) -> list[CacheUnit]:
    """The cacheable units of a denoiser, largest first (empty when the architecture has none)."""
    units: list[CacheUnit] = []
    down, up, mid = (getattr(denoiser, a, None) for a in ("down_blocks", "up_blocks", "mid_block"))
    if isinstance(down, nn.ModuleList) and isinstance(up, nn.ModuleList) and isinstance(mid, nn.Module) \
            and len(down) == len(up) and len(down) >= 2:
        D = len(down)
        for b in range(D - 1):
            mods = ([f"down_blocks.{i}" for i in range(b + 1, D)] + ["mid_block"]
                    + [f"up_blocks.{i}" for i in range(D - 1 - b)])
            units.append(CacheUnit(f"deep@down_blocks.{b}", "unet-deep", tuple(mods)))
    blocks = getattr(denoiser, "transformer_blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) >= 2 and not hasattr(denoiser, "single_transformer_blocks"):
        N = len(blocks)
        last = N - 2 if N >= 3 else 1
        for j in range(last, 0, -1):
            units.append(CacheUnit(f"residual@transformer_blocks.1-{j}", "transformer-residual",
                                   tuple(f"transformer_blocks.{i}" for i in range(1, j + 1))))
    return units


def get_unit(denoiser: nn.Module, name: str | None = None) -> CacheUnit:
    """The unit called ``name`` (default: the largest) of ``denoiser``."""
    units = cache_units(denoiser)
    if not units:
        raise ModelError(f"{type(denoiser).__name__} has no cacheable unit mpsearch knows (a UNet with down/mid/up "
                         "blocks, or a transformer whose transformer_blocks return one tensor)")
    if name is None:
        return units[0]
    for u in units:
        if u.name == name:
            return u
    raise ModelError(f"{type(denoiser).__name__} has no cache unit {name!r}; choose one of "
                     f"{', '.join(u.name for u in units)}")


def example_inputs(denoiser: nn.Module) -> dict | None:
    """A batch-1 input for one denoiser call built from its config, or None if the signature is unknown."""
    cfg = getattr(denoiser, "config", None)
    if cfg is None:
        return None
    size = cfg.get("sample_size")
    size = size if isinstance(size, int) else (size[0] if size else None)
    chans = cfg.get("in_channels")
    if not size or not chans:
        return None
    p = next(denoiser.parameters())
    x = torch.randn(1, chans, size, size, dtype=p.dtype, device=p.device)
    t = torch.tensor([500], device=p.device)
    name = type(denoiser).__name__
    if name == "UNet2DModel":
        kw = {"sample": x, "timestep": t}
        if cfg.get("num_class_embeds"):
            kw["class_labels"] = torch.zeros(1, dtype=torch.long, device=p.device)
        return kw
    if name == "UNet2DConditionModel":
        dim = cfg.get("cross_attention_dim")
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        text = torch.randn(1, 8, dim, dtype=p.dtype, device=p.device)
        return {"sample": x, "timestep": t, "encoder_hidden_states": text}
    if name == "DiTTransformer2DModel":
        return {"hidden_states": x, "timestep": t, "class_labels": torch.zeros(1, dtype=torch.long, device=p.device)}
    return None


def compute_shares(denoiser: nn.Module, units: list[CacheUnit] | None = None,
                   inputs: dict | None = None) -> dict[str, float | None]:
    """Fraction of one denoiser call's FLOPs (torch's FlopCounterMode: matmuls and convolutions) that each
    unit skips on a reuse step. None for every unit when no example input can be built for the model, or when
    the model rejects the example's arguments (a TypeError or ValueError: e.g. SDXL's UNet wants added
    conditions); any other error of the forward, out of memory included, propagates."""
    units = cache_units(denoiser) if units is None else units
    inputs = inputs if inputs is not None else example_inputs(denoiser)
    if inputs is None or not units:
        return {u.name: None for u in units}
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            denoiser(**inputs)
    except (TypeError, ValueError):  # a model needing inputs we cannot build (e.g. SDXL's added conditions)
        return {u.name: None for u in units}
    counts = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    root = type(denoiser).__name__
    total = counts.get("Global") or counts.get(root) or 0
    return {u.name: (sum(counts.get(f"{root}.{m}", 0) for m in u.modules) / total if total else None)
            for u in units}
