"""What a report shows, as plain data: :class:`Variant` (one way of running the model) and :class:`ReportData`.

:func:`~mpsearch.apps.report.gather.gather_report` fills a :class:`ReportData` once (it runs the solver sweep and the
pipeline); the figures, the page and the folder writer only read it. :meth:`ReportData.summary` is the JSON
written beside the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReportData", "Variant"]


@dataclass
class Variant:
    """One way of running the model: full precision, a uniform format, or a plan file."""

    name: str
    kind: str  # "fp", "uniform" or "plan"
    source: str | None = None  # the plan file
    layers: list[str] = field(default_factory=list)  # format per layer, in layer order
    bytes: int | None = None  # predicted denoiser bytes
    objective: float | None = None  # predicted error under the profile's metric (the solver's objective)
    formats: dict = field(default_factory=dict)
    cache: list[bool] | None = None  # per step: computed (True) or reused (False)
    cache_label: str = ""
    scores: dict = field(default_factory=dict)  # image error against full precision (mse, psnr, ssim), bytes

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "source": self.source, "bytes": self.bytes,
                "objective": self.objective, "formats": dict(self.formats), "cache": self.cache,
                "scores": dict(self.scores)}


@dataclass
class ReportData:
    """Everything a report shows, gathered once; ``render_report`` only draws it."""

    title: str
    created: str
    model: str | None
    profile: str | None
    denoiser_class: str | None = None
    fp_bytes: int | None = None
    layer_names: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)  # the profile's formats (fp first)
    steps: int | None = None  # profiled steps
    heatmaps: dict = field(default_factory=dict)  # metric -> (layers, formats, steps) array, NaN = ineligible
    frontier: dict | None = None  # {"metric", "uniform": {fmt: {...}}, "curves": {label: [{total_bytes, ...}]}}
    variants: list[Variant] = field(default_factory=list)  # fp, the plans, the uniform baselines
    images: dict = field(default_factory=dict)  # variant name -> (N, H, W, C) in [0, 1]
    image_conditions: list = field(default_factory=list)
    image_seed: int | None = None
    image_steps: int | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The numbers of the report as plain JSON data (written as report.json)."""
        return {"title": self.title, "created": self.created, "model": self.model, "profile": self.profile,
                "class": self.denoiser_class, "fp_bytes": self.fp_bytes, "layers": len(self.layer_names),
                "formats": list(self.formats), "profiled_steps": self.steps, "frontier": self.frontier,
                "variants": [v.to_dict() for v in self.variants],
                "images": {"conditions": list(self.image_conditions), "seed": self.image_seed,
                           "steps": self.image_steps} if self.images else None,
                "notes": list(self.notes)}
