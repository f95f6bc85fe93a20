"""`mpsearch report`: one self-contained HTML page with PNG figures about a profile and plans.

``gather_report(...)`` collects the numbers and images (it runs the solver sweep and the pipeline);
``render_report(data, out)`` only draws and writes: ``out/index.html`` plus PNGs beside it, linked by relative
paths, no network resources. The folder is built under a temporary name next to ``out`` and renamed into place
at the end, so an error never leaves a half-written report behind (an older report in ``out`` is replaced).

Sections: sensitivity heatmaps (layer x step, one panel per format, one figure per metric), the Pareto frontier
with the uniform formats and the given plans as points, each plan's format per layer along the network with the
layers' roles, the cache timeline of plans that reuse features, and an image grid (full precision, the plans,
the uniform baselines) with per-variant bytes and image error against full precision.

Layout (data flows down the list): ``data`` (ReportData, Variant), ``gather`` (gather_report), ``figures``
(the PNGs), ``page`` (the HTML), ``render`` (render_report: the folder, written atomically); :func:`report`
here runs gather then render.
"""

from __future__ import annotations

from pathlib import Path

from mpsearch.apps.report.data import ReportData, Variant
from mpsearch.apps.report.gather import gather_report
from mpsearch.apps.report.render import check_out, render_report

__all__ = ["ReportData", "Variant", "gather_report", "render_report", "report"]


def report(profile=None, plans=(), model=None, out="report", **options) -> dict:
    """``gather_report`` then ``render_report``: returns ``{"folder", "index", "files", "data"}``."""
    check_out(Path(out))  # fail before the expensive part
    data = gather_report(profile, plans, model, **options)
    return render_report(data, out) | {"data": data}
