"""The report's figures, each drawn from :class:`~mpsearch.apps.report.data.ReportData` into PNG bytes.

Sensitivity heatmaps (layer x step, one panel per format), the Pareto frontier with the uniform formats and the
plans as points, each plan's format per layer along the network beside the layers' roles, the cache timeline,
and the image grid. Matplotlib is imported on first use, with the Agg backend; colours are one grey for full
precision and a yellow-to-red ramp for the other formats (fewer bits read darker).
"""

from __future__ import annotations

import io
import math

import numpy as np

from mpsearch.apps.report.data import ReportData, Variant
from mpsearch.budget import format_bytes
from mpsearch.formats import available_formats


def _format_colors(extra=()) -> dict:
    from matplotlib import colormaps


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


METRIC_TEXT = {  # how each local metric reads; every colour map makes the sensitive cells dark
    "rel_mse": ("relative MSE of the layer output (log scale)", "magma_r", True),
    "sqnr": ("SQNR of the layer output (dB)", "magma", False),
    "cosine": ("cosine similarity to the full-precision output", "magma", False),
    "gn": ("output error carried to the denoiser's output (gn, log scale)", "magma_r", True),
}


def heatmap_png(data: ReportData, metric: str) -> bytes:
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    values = data.heatmaps[metric]
    fmt_idx = [i for i, f in enumerate(data.formats) if i > 0]  # the first format is full precision
    label, cmap_name, log = METRIC_TEXT.get(metric, (metric, "viridis", False))
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
    for ax, f in zip(axes, fmt_idx, strict=True):
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


def frontier_png(data: ReportData) -> bytes:
    fr = data.frontier
    pts = [p for curve in fr["curves"].values() for p in curve]
    plans = [v for v in data.variants if v.kind == "plan" and v.bytes is not None and v.objective is not None]
    unit, size = _scale([p["total_bytes"] for p in pts] + [u["total_bytes"] for u in fr["uniform"].values()])
    fig = _figure(7.4, 4.6)
    ax = fig.add_subplot()
    # strict=False: a frontier may have fewer curves than the two styles on offer
    for (label, curve), style, color in zip(fr["curves"].items(), ("-o", "--o"), ("C0", "C9"), strict=False):
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


def network_png(data: ReportData, plans: list[Variant]) -> bytes:
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
    for r, (_label, v) in enumerate(rows):
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


def cache_png(data: ReportData, plans: list[Variant]) -> bytes:
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


def grid_png(data: ReportData) -> bytes:

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
