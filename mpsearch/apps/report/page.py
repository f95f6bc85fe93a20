"""The report's HTML page: the summary table of the variants, the sections with their figures and captions, and
the inline style sheet; no scripts and no network resources, figures linked by relative paths.
"""

from __future__ import annotations

import html
import math

from mpsearch.apps.report.data import ReportData
from mpsearch.apps.report.figures import _METRIC_TEXT
from mpsearch.budget import format_bytes


def _fmt_num(x, spec=".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "&ndash;"
    return format(x, spec)


def _variants_table(data: ReportData) -> str:

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
            parts.append(_figure_html(src, f"sensitivity {metric}",
                                      html.escape(_METRIC_TEXT.get(metric, (metric,))[0])))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body>\n{body}\n</body></html>\n")
