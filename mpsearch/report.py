"""`mpsearch report`: one self-contained HTML page with PNG figures about a profile and plans.

``gather_report(...)`` collects the numbers and images (it runs the solver sweep and the pipeline);
``render_report(data, out)`` only draws and writes: ``out/index.html`` plus PNGs beside it, linked by relative
paths, no network resources. The folder is built under a temporary name next to ``out`` and renamed into place
at the end, so an error never leaves a half-written report behind (an older report in ``out`` is replaced).

Sections: sensitivity heatmaps (layer x step, one panel per format, one figure per metric), the Pareto frontier
with the uniform formats and the given plans as points, each plan's format per layer along the network with the
layers' roles, the cache timeline of plans that reuse features, and an image grid (full precision, the plans,
the uniform baselines) with per-variant bytes and image error against full precision.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MpsearchError, PlanError, ProfileError, UsageError

__all__ = ["ReportData", "Variant", "gather_report", "render_report", "report"]

#: files a report folder holds; a non-empty --out folder with anything else is refused, never replaced
_REPORT_SUFFIXES = (".png", ".html", ".json")


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


# ---------------------------------------------------------------- gathering

def _plan_objective(problem, plan_layers: list[str]) -> float | None:
    """The solver objective of an assignment under ``problem`` (None where a format is not in the profile)."""
    index = {f: i for i, f in enumerate(problem.formats)}
    if any(f not in index for f in plan_layers):
        return None
    choice = np.array([index[f] for f in plan_layers], dtype=np.int64)
    value = problem.objective(choice)
    return float(value) if math.isfinite(value) else None


def _variant_from_plan(name: str, kind: str, plan, source=None) -> Variant:
    cache, label = None, ""
    if plan.cache is not None:
        cache = [bool(c) for c in plan.cache["compute"]]
        unit = plan.cache.get("unit", {}).get("name", "?")
        label = f"{plan.cache.get('method', 'cache')}, unit {unit}: {sum(cache)}/{len(cache)} steps computed"
    return Variant(name=name, kind=kind, source=source, layers=list(plan.layers.values()),
                   bytes=int(plan.predictions["bytes"]) if "bytes" in plan.predictions else None,
                   formats=plan.format_counts(), cache=cache, cache_label=label)


def gather_report(profile=None, plans=(), model=None, *, labels=tuple(range(10)), seed: int = 0,
                  steps: int | None = None, metric: str = "rel_mse", points: int = 12, images: bool = True,
                  uniform_formats=None, log: Callable[[str], None] | None = None) -> ReportData:
    """Collect a report's data.

    ``profile``: a Profile or its path (None: no heatmaps, no frontier). ``plans``: plan files or Plan objects.
    ``model``: a pipeline object or a name/folder for ``load_pipeline`` (None: no images). Images use
    ``labels`` (class ids or prompts), one ``seed`` and ``steps`` steps (default: the plans' cache schedule
    length, else 20). ``points``: budgets of the Pareto sweep. ``uniform_formats``: the uniform baselines
    (default: the profile's formats, or every primary format).
    """
    from .formats import available_formats
    from .models import describe
    from .plan import Plan
    from .profile_store import Profile

    say = log or (lambda _msg: None)
    if profile is None and not plans and model is None:
        raise UsageError("a report needs a profile (--profile), a plan (--plan) or a model to generate with")
    prof = None
    if profile is not None:
        prof = profile if isinstance(profile, Profile) else Profile.load(profile)
    loaded = []
    for p in plans:
        plan = p if isinstance(p, Plan) else Plan.load(p)
        loaded.append((Path(p).stem if not isinstance(p, Plan) else f"plan {len(loaded) + 1}",
                       None if isinstance(p, Plan) else str(p), plan))
    pipe = None
    if model is not None and images:
        if isinstance(model, (str, os.PathLike)):
            from .pipeline import load_pipeline

            say(f"loading {model}")
            pipe = load_pipeline(model)
        else:
            pipe = model
    info = prof.info if prof is not None else (describe(pipe) if pipe is not None else None)
    if prof is not None and pipe is not None and describe(pipe).fingerprint != prof.info.fingerprint:
        raise ProfileError(f"the profile {prof.path} was made for another model than {_model_name(model)} "
                              f"({prof.info.denoiser_class}, fingerprint {prof.info.fingerprint}); give the "
                              "matching --model or profile")
    for name, source, plan in loaded:
        if info is not None and plan.fingerprint != info.fingerprint:
            raise PlanError(f"plan {source or name} was made for another model ({plan.model_class}, fingerprint "
                            f"{plan.fingerprint}) than the report's ({info.denoiser_class}, fingerprint "
                            f"{info.fingerprint}); give plans, profile and model that match")

    data = ReportData(title=f"mpsearch report: {info.denoiser_class if info else loaded[0][2].model_class}",
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      model=_model_name(model), profile=str(prof.path) if prof is not None and prof.path else None)
    if info is not None:
        data.denoiser_class, data.fp_bytes = info.denoiser_class, info.fp_bytes
        data.layer_names = list(info.names)
        data.roles = [layer.role.value for layer in info.layers]
    else:
        data.layer_names = list(loaded[0][2].layers)

    problem = None
    if prof is not None:
        from .profile_store import LOCAL_METRICS
        from .solve import build_problem

        data.formats, data.steps = list(prof.formats), prof.steps
        data.heatmaps = {m: prof.metric(m) for m in LOCAL_METRICS}
        problem = build_problem(prof, None, metric=metric)
        if points >= 2:
            from .pareto import pareto

            say(f"solving {points} budgets for the Pareto frontier, with and without the default role pins")
            curves, uniform = {}, {}
            for label, role_pins in (("default role pins", None), ("no pins", {})):
                r = pareto(prof, n=points, metric=metric, role_pins=role_pins)
                uniform = r["uniform"]
                curves[label] = [{"budget_bytes": p.budget_bytes, "total_bytes": p.total_bytes,
                                  "objective": p.objective, "on_frontier": p.on_frontier}
                                 for p in r["points"] if p.total_bytes is not None]
            data.frontier = {"metric": metric, "uniform": uniform, "curves": curves}

    # variants: full precision, the plans, the uniform baselines
    full = available_formats()[0]  # the registry lists full precision first
    n_layers = len(data.layer_names)
    variants = [Variant("full precision", "fp", layers=[full] * n_layers, formats={full: n_layers},
                        bytes=info.fp_bytes if info is not None else None,
                        objective=0.0 if problem is not None else None)]
    plan_objects = {"full precision": None}
    for name, source, plan in loaded:
        base, k = name, 2
        while name in plan_objects:  # two plans with one file name (in different folders)
            name, k = f"{base} ({k})", k + 1
        v = _variant_from_plan(name, "plan", plan, source)
        if problem is not None:
            v.objective = _plan_objective(problem, v.layers)
        variants.append(v)
        plan_objects[name] = plan
    if info is not None:
        fmts = list(uniform_formats) if uniform_formats is not None else \
            [f for f in (prof.formats if prof is not None else available_formats()) if f != full]
        for fmt in fmts:
            plan = Plan.uniform(pipe if pipe is not None else info, fmt)
            v = _variant_from_plan(f"uniform {fmt}", "uniform", plan)
            if problem is not None:
                v.objective = _plan_objective(problem, v.layers)
            variants.append(v)
            plan_objects[v.name] = plan
    data.variants = variants

    if prof is None:
        data.notes.append("no profile given (--profile, or run `mpsearch profile`): the sensitivity heatmaps and the "
                          "Pareto frontier are left out")
    if not loaded:
        data.notes.append("no plan given (--plan): the plan-along-the-network and cache sections are left out")
    if pipe is not None:
        _gather_images(data, pipe, plan_objects, list(labels), seed, steps, say)
    elif images and model is None:
        data.notes.append("no model given: the report has no images")
    return data


def _model_name(model) -> str | None:
    if model is None:
        return None
    return str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__


def _gather_images(data: ReportData, pipe, plan_objects: dict, conditions: list, seed: int, steps, say) -> None:
    from .evaluate import image_scores
    from .executor import apply_plan
    from .generation import generate
    from .models import measured_bytes

    lengths = {len(v.cache) for v in data.variants if v.cache is not None}
    if len(lengths) > 1:
        raise UsageError(f"the plans' cache schedules cover different step counts ({sorted(lengths)}); "
                         "report plans with one step count together")
    if lengths and steps is not None and steps not in lengths:
        raise UsageError(f"--steps {steps} differs from the plans' cache schedule ({lengths.pop()} steps); "
                         "leave --steps out or give the schedule's step count")
    steps = steps if steps is not None else (lengths.pop() if lengths else 20)
    data.image_conditions, data.image_seed, data.image_steps = list(conditions), int(seed), int(steps)
    say(f"generating {len(conditions)} images in full precision")
    reference = generate(pipe, conditions, seed, steps)
    data.images["full precision"] = reference
    data.variants[0].scores = {"bytes": int(measured_bytes(pipe))}
    for v in data.variants[1:]:
        say(f"generating {len(conditions)} images with {v.name}")
        handle = apply_plan(pipe, plan_objects[v.name])
        try:
            out = generate(pipe, conditions, seed, steps)
            nbytes = measured_bytes(pipe)
        finally:
            handle.remove()
        data.images[v.name] = out
        v.scores = {k: float(x) for k, x in image_scores(reference, out).items()} | {"bytes": int(nbytes)}


# ---------------------------------------------------------------- rendering

def _format_colors(extra=()) -> dict:
    from matplotlib import colormaps

    from .formats import available_formats

    names = list(dict.fromkeys([*available_formats(variants=True), *extra]))
    # full precision in grey, then light to dark: fewer bits read darker
    ramp = colormaps["YlOrRd"]
    out = {names[0]: (0.78, 0.78, 0.78, 1.0)}
    rest = names[1:]
    for i, n in enumerate(rest):
        out[n] = ramp(0.25 + 0.7 * i / max(len(rest) - 1, 1))
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _figure(w, h):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100)


def _layer_ticks(ax, names, axis="y"):
    n = len(names)
    every = max(1, math.ceil(n / 120))
    idx = list(range(0, n, every))
    if axis == "y":
        ax.set_yticks(idx)
        ax.set_yticklabels([names[i] for i in idx], fontsize=6 if n > 30 else 8)
    else:
        ax.set_xticks(idx)
        ax.set_xticklabels([names[i] for i in idx], fontsize=6 if n > 30 else 8, rotation=90)


_METRIC_TEXT = {  # how each local metric reads; every colour map makes the sensitive cells dark
    "rel_mse": ("relative MSE of the layer output (log scale)", "magma_r", True),
    "sqnr": ("SQNR of the layer output (dB)", "magma", False),
    "cosine": ("cosine similarity to the full-precision output", "magma", False),
}


def _heatmap_png(data: ReportData, metric: str) -> bytes:
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    values = data.heatmaps[metric]
    fmt_idx = [i for i, f in enumerate(data.formats) if i > 0]  # the first format is full precision
    label, cmap_name, log = _METRIC_TEXT.get(metric, (metric, "viridis", False))
    shown = values[:, fmt_idx, :]
    finite = shown[np.isfinite(shown)]
    if log:
        positive = finite[finite > 0]
        lo = float(positive.min()) if positive.size else 1e-12
        hi = float(positive.max()) if positive.size else 1.0
        norm = LogNorm(vmin=lo, vmax=max(hi, lo * 10))
        shown = np.where(np.isnan(shown) | (shown > 0), shown, lo)  # NaN stays: ineligible
    else:
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
    cmap = colormaps[cmap_name].with_extremes(bad=(0.9, 0.9, 0.9))
    n_layers, n_steps = values.shape[0], values.shape[2]
    height = min(2.0 + 0.16 * n_layers, 30.0)
    width = 2.5 + (1.6 + 0.12 * n_steps) * len(fmt_idx)
    fig = _figure(min(width, 22.0), height)
    axes = fig.subplots(1, len(fmt_idx), sharey=True, squeeze=False)[0]
    im = None
    for ax, f in zip(axes, fmt_idx):
        im = ax.imshow(np.ma.masked_invalid(shown[:, fmt_idx.index(f), :]), aspect="auto", cmap=cmap, norm=norm,
                       interpolation="nearest")
        ax.set_title(data.formats[f], fontsize=10)
        ax.set_xlabel("denoising step")
        ax.set_xticks(range(0, n_steps, max(1, n_steps // 10)))
    _layer_ticks(axes[0], data.layer_names)
    fig.colorbar(im, ax=list(axes), fraction=0.04, pad=0.02).set_label(label)
    fig.suptitle(f"sensitivity per layer and step: {metric} (dark = sensitive; grey = format not eligible)",
                 fontsize=11)
    return _png(fig)


def _scale(nbytes):
    big = max(nbytes) if nbytes else 1
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if big >= size:
            return unit, size
    return "B", 1.0


def _frontier_png(data: ReportData) -> bytes:
    fr = data.frontier
    pts = [p for curve in fr["curves"].values() for p in curve]
    plans = [v for v in data.variants if v.kind == "plan" and v.bytes is not None and v.objective is not None]
    unit, size = _scale([p["total_bytes"] for p in pts] + [u["total_bytes"] for u in fr["uniform"].values()])
    fig = _figure(7.4, 4.6)
    ax = fig.add_subplot()
    for (label, curve), style, color in zip(fr["curves"].items(), ("-o", "--o"), ("C0", "C9")):
        front = sorted((p for p in curve if p["on_frontier"]), key=lambda p: p["total_bytes"])
        ax.plot([p["total_bytes"] / size for p in front], [p["objective"] for p in front], style, color=color,
                ms=4, label=f"mpsearch frontier ({label})")
    colors = _format_colors(fr["uniform"])
    for name, u in fr["uniform"].items():
        ax.plot(u["total_bytes"] / size, u["objective"], marker="s", ms=8, ls="none", color=colors[name],
                markeredgecolor="k", label=f"uniform {name}")
    for i, v in enumerate(plans):
        ax.plot(v.bytes / size, v.objective, marker="*", ms=14, ls="none", color=f"C{(i + 2) % 10}",
                markeredgecolor="k", label=f"plan {v.name}")
    positive = [p["objective"] for p in pts if p["objective"] > 0] + \
        [u["objective"] for u in fr["uniform"].values() if u["objective"] > 0]
    if positive and max(positive) / max(min(positive), 1e-300) > 100:
        ax.set_yscale("symlog", linthresh=min(positive))
    ax.set_xlabel(f"denoiser size ({unit})")
    ax.set_ylabel(f"predicted error (sum of per-layer {fr['metric']})")
    ax.set_title("bytes vs predicted error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _network_png(data: ReportData, plans: list[Variant]) -> bytes:
    from matplotlib.patches import Patch

    n = len(data.layer_names)
    rows = ([("role", None)] if data.roles else []) + [(v.name, v) for v in plans]
    fmt_colors = _format_colors([f for v in plans for f in v.layers])
    fmt_names = list(fmt_colors)
    roles = list(dict.fromkeys(data.roles))
    from matplotlib import colormaps

    cool = colormaps["tab20c"]  # blues, greens, purples: never mistaken for the formats' yellow-to-red ramp
    role_colors = {r: cool([0, 8, 12, 2, 10, 14, 1, 9, 13, 3][i % 10]) for i, r in enumerate(roles)}
    width = min(max(7.0, 2.5 + 0.14 * n), 28.0)
    fig = _figure(width, 1.0 + 0.32 * len(rows) + (2.4 if n <= 120 else 0.6))
    ax = fig.add_subplot()
    for r, (label, v) in enumerate(rows):
        if v is None:
            colors = [role_colors[x] for x in data.roles]
        else:
            colors = [fmt_colors[f] for f in v.layers]
        ax.imshow(np.array([colors]), aspect="auto", extent=(-0.5, n - 0.5, r + 0.4, r - 0.4),
                  interpolation="nearest")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label for label, _ in rows], fontsize=9)
    if n <= 120:
        _layer_ticks(ax, data.layer_names, axis="x")
    else:
        ax.set_xlabel("layer (execution order)")
    used = [f for f in fmt_names if any(f in v.layers for v in plans)]
    handles = [Patch(color=fmt_colors[f], label=f) for f in used]
    handles += [Patch(color=role_colors[x], label=f"role: {x}") for x in roles]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), title="format / role",
              title_fontsize=8)
    ax.set_title("format per layer, in layer order (top row: the layer's role)", fontsize=10)
    return _png(fig)


def _cache_png(data: ReportData, plans: list[Variant]) -> bytes:
    from matplotlib.patches import Patch

    steps = max(len(v.cache) for v in plans)
    fig = _figure(min(max(6.0, 2.5 + 0.35 * steps), 22.0), 1.3 + 0.5 * len(plans))
    ax = fig.add_subplot()
    on, off = (0.16, 0.4, 0.69, 1.0), (0.87, 0.9, 0.94, 1.0)
    for r, v in enumerate(plans):
        for s, c in enumerate(v.cache):
            ax.add_patch(_rect(s - 0.45, r - 0.35, 0.9, 0.7, on if c else off))
    ax.set_xlim(-0.6, steps - 0.4)
    ax.set_ylim(len(plans) - 0.5, -0.5)
    ax.set_yticks(range(len(plans)))
    ax.set_yticklabels([f"{v.name}\n({sum(v.cache)}/{len(v.cache)} computed)" for v in plans], fontsize=8)
    ax.set_xticks(range(steps))
    ax.set_xlabel("denoising step")
    ax.legend(handles=[Patch(color=on, label="computed"), Patch(color=off, label="reused from cache")], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.005, 1.0))
    ax.set_title("cache timeline", fontsize=10)
    return _png(fig)


def _rect(x, y, w, h, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, color=color)


def _grid_png(data: ReportData) -> bytes:
    from .budget import format_bytes

    names = [v.name for v in data.variants if v.name in data.images]
    labels = {}
    for v in data.variants:
        nbytes = v.scores.get("bytes", v.bytes)
        extra = [format_bytes(nbytes)] if nbytes is not None else []
        if "ssim" in v.scores:
            extra.append(f"SSIM {v.scores['ssim']:.4f}")
        labels[v.name] = v.name + ("\n" + ", ".join(extra) if extra else "")
    cols = len(data.image_conditions)
    fig = _figure(1.6 + 0.95 * cols, 0.3 + 1.0 * len(names))
    axes = fig.subplots(len(names), cols, squeeze=False)
    for r, name in enumerate(names):
        imgs = data.images[name]
        for c in range(cols):
            ax = axes[r][c]
            img = np.clip(imgs[c], 0, 1)
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                cond = data.image_conditions[c]
                ax.set_title(str(cond)[:14], fontsize=8)
            if c == 0:
                ax.set_ylabel(labels[name], fontsize=8, rotation=0, ha="right", va="center")
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return _png(fig)


def _fmt_num(x, spec=".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "&ndash;"
    return format(x, spec)


def _variants_table(data: ReportData) -> str:
    from .budget import format_bytes

    has_scores = any(v.scores for v in data.variants)
    head = ["variant", "predicted bytes", "of full precision", f"predicted error ({data.frontier['metric']})"
            if data.frontier else "predicted error", "formats", "cache"]
    if has_scores:
        head += ["measured bytes", "MSE vs fp", "PSNR (dB)", "SSIM vs fp"]
    rows = []
    for v in data.variants:
        share = v.bytes / data.fp_bytes if v.bytes is not None and data.fp_bytes else None
        cells = [html.escape(v.name) + (f"<br><small>{html.escape(v.source)}</small>" if v.source else ""),
                 format_bytes(v.bytes) if v.bytes is not None else "&ndash;",
                 f"{share:.1%}" if share is not None else "&ndash;", _fmt_num(v.objective),
                 html.escape(", ".join(f"{k}: {n}" for k, n in v.formats.items())) or "all fp",
                 html.escape(v.cache_label) or "&ndash;"]
        if has_scores:
            s = v.scores
            cells += [format_bytes(s["bytes"]) if "bytes" in s else "&ndash;", _fmt_num(s.get("mse")),
                      _fmt_num(s.get("psnr"), ".2f"), _fmt_num(s.get("ssim"), ".4f")]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}table{border-collapse:collapse;font-size:.9em;margin:1em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}
td small{color:#777}.note{color:#8a5a00}nav a{margin-right:1em}
"""


def _figure_html(src: str, alt: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}"><figcaption>{caption}</figcaption>'
            "</figure>")


def _page(data: ReportData, figures: dict) -> str:
    from .budget import format_bytes

    parts = [f"<h1>{html.escape(data.title)}</h1>"]
    meta = [f"created {html.escape(data.created)}"]
    if data.model:
        meta.append(f"model <code>{html.escape(data.model)}</code>")
    if data.profile:
        meta.append(f"profile <code>{html.escape(data.profile)}</code>")
    if data.fp_bytes:
        meta.append(f"{len(data.layer_names)} candidate layers, full precision {format_bytes(data.fp_bytes)}")
    parts.append(f'<p class="meta">{" &middot; ".join(meta)}</p>')
    sections = [("summary", "Summary")] + [(k, t) for k, t in (("frontier", "Pareto frontier"),
                                                              ("network", "Plan along the network"),
                                                              ("cache", "Cache timeline"), ("images", "Images"),
                                                              ("heatmaps", "Sensitivity")) if k in figures]
    parts.append("<nav>" + "".join(f'<a href="#{k}">{t}</a>' for k, t in sections) + "</nav>")
    parts.append('<h2 id="summary">Summary</h2>' + _variants_table(data))
    if data.images:
        parts.append(f"<p>Images: seed {data.image_seed}, {data.image_steps} steps, conditions "
                     f"{html.escape(', '.join(str(c) for c in data.image_conditions))}. MSE, PSNR and SSIM are "
                     "measured against the full-precision images of the same seed.</p>")
    for note in data.notes:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    if "frontier" in figures:
        fr = data.frontier
        n = max(len(c) for c in fr["curves"].values())
        parts.append('<h2 id="frontier">Pareto frontier</h2>' + _figure_html(
            figures["frontier"], "Pareto frontier",
            f"Up to {n} budgets solved from the smallest feasible size to full precision, once with the default "
            "role pins of <code>mpsearch solve</code> (fragile layers kept at higher precision) and once without "
            "pins, as the uniform plans have none; squares: every layer in one format; stars: the given plans. "
            f"The error is the solver's prediction from the profile ({html.escape(fr['metric'])} summed over "
            "layers), not a measurement; the table and the images measure."))
    if "network" in figures:
        parts.append('<h2 id="network">Plan along the network</h2>' + _figure_html(
            figures["network"], "format per layer", "Each column is one candidate layer, in execution order."))
    if "cache" in figures:
        parts.append('<h2 id="cache">Cache timeline</h2>' + _figure_html(
            figures["cache"], "cache timeline", "Steps at which the cached unit is computed or its features reused."))
    if "images" in figures:
        parts.append('<h2 id="images">Images</h2>' + _figure_html(
            figures["images"], "image grid", "One row per variant, one column per condition."))
    if "heatmaps" in figures:
        parts.append('<h2 id="heatmaps">Sensitivity</h2><p>Measured by the profile (local tier): the error each '
                     "format causes in each layer's output at each step, the model otherwise in full precision.</p>")
        for metric, src in figures["heatmaps"].items():
            parts.append(_figure_html(src, f"sensitivity {metric}", html.escape(_METRIC_TEXT.get(metric, (metric,))[0])))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body>\n{body}\n</body></html>\n")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the report")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.is_dir() or p.suffix not in _REPORT_SUFFIXES)
        if foreign:
            raise UsageError(f"--out {out} holds files that are not part of a report ({', '.join(foreign[:3])}); "
                             "give a new or empty folder")


def render_report(data: ReportData, out) -> dict:
    """Draw ``data`` and write ``out/index.html``, the PNGs and ``report.json``; returns the paths written.

    Everything is written into a temporary folder beside ``out`` first and renamed into place at the end."""
    from .io import atomic_write_bytes

    out = Path(out)
    _check_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise MpsearchError(f"cannot write the report to {out}: {e.strerror or e}; choose a writable --out") from None
    try:
        figures: dict = {}
        names: list[str] = []

        def write(name: str, payload: bytes) -> str:
            os.chmod(atomic_write_bytes(tmp / name, payload), 0o644)
            names.append(name)
            return name

        plans = [v for v in data.variants if v.kind == "plan"]
        if data.frontier is not None and any(data.frontier["curves"].values()):
            figures["frontier"] = write("frontier.png", _frontier_png(data))
        if plans and data.layer_names:
            figures["network"] = write("plan_layers.png", _network_png(data, plans))
        cached = [v for v in plans if v.cache is not None]
        if cached:
            figures["cache"] = write("cache_timeline.png", _cache_png(data, cached))
        if data.images:
            figures["images"] = write("images.png", _grid_png(data))
        if data.heatmaps:
            figures["heatmaps"] = {m: write(f"sensitivity_{m}.png", _heatmap_png(data, m)) for m in data.heatmaps}
        write("report.json", json.dumps(data.summary(), indent=1, default=str).encode())
        write("index.html", _page(data, figures).encode("utf-8"))
        os.chmod(tmp, 0o755)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"folder": str(out), "index": str(out / "index.html"), "files": [str(out / n) for n in names]}


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``, replacing an older report there."""
    _check_out(out)
    try:
        if not out.exists():
            os.replace(tmp, out)
            return
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise MpsearchError(f"cannot write the report to {out}: {e.strerror or e}; choose a writable --out") from None


def report(profile=None, plans=(), model=None, out="report", **options) -> dict:
    """``gather_report`` then ``render_report``: returns ``{"folder", "index", "files", "data"}``."""
    _check_out(Path(out))  # fail before the expensive part
    data = gather_report(profile, plans, model, **options)
    return render_report(data, out) | {"data": data}
