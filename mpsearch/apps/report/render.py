"""Writing a report folder: :func:`render_report` draws the figures, the page and ``report.json`` into a
temporary folder beside ``out`` and renames it into place at the end.

An error never leaves a half-written report behind; an older report in ``out`` is replaced, but a folder that
holds anything other than a report's files (:data:`_REPORT_SUFFIXES`) is refused, never replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mpsearch.apps.report.data import ReportData
from mpsearch.apps.report.figures import cache_png, frontier_png, grid_png, heatmap_png, network_png
from mpsearch.apps.report.page import render_page
from mpsearch.errors import MpsearchError, UsageError
from mpsearch.io import atomic_write_bytes, replace_folder, staging_folder

__all__ = ["render_report"]

#: files a report folder holds; a non-empty --out folder with anything else is refused, never replaced
_REPORT_SUFFIXES = (".png", ".html", ".json")


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        # exit 1 like every other "cannot write --out" (export, solve, profile merge)
        raise MpsearchError(f"cannot write the report to {out}: it is a file; choose a folder for --out")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.is_dir() or p.suffix not in _REPORT_SUFFIXES)
        if foreign:
            raise UsageError(f"--out {out} holds files that are not part of a report ({', '.join(foreign[:3])}); "
                             "give a new or empty folder")


def render_report(data: ReportData, out) -> dict:
    """Draw ``data`` and write ``out/index.html``, the PNGs and ``report.json``; returns the paths written.

    Everything is written into a temporary folder beside ``out`` first and renamed into place at the end."""

    out = Path(out)
    check_out(out)
    tmp = staging_folder(out, MpsearchError, "choose a writable --out")
    try:
        figures: dict = {}
        names: list[str] = []

        def write(name: str, payload: bytes) -> str:
            atomic_write_bytes(tmp / name, payload)  # with the user's umask, as the folder has
            names.append(name)
            return name

        plans = [v for v in data.variants if v.kind == "plan"]
        if data.frontier is not None and any(data.frontier["curves"].values()):
            figures["frontier"] = write("frontier.png", frontier_png(data))
        if plans and data.layer_names:
            figures["network"] = write("plan_layers.png", network_png(data, plans))
        cached = [v for v in plans if v.cache is not None]
        if cached:
            figures["cache"] = write("cache_timeline.png", cache_png(data, cached))
        if data.images:
            figures["images"] = write("images.png", grid_png(data))
        if data.heatmaps:
            figures["heatmaps"] = {m: write(f"sensitivity_{m}.png", heatmap_png(data, m)) for m in data.heatmaps}
        write("report.json", json.dumps(data.summary(), indent=1, default=str).encode())
        write("index.html", render_page(data, figures).encode("utf-8"))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"folder": str(out), "index": str(out / "index.html"), "files": [str(out / n) for n in names]}


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``, replacing an older report there."""
    check_out(out)
    try:
        replace_folder(tmp, out)
    except OSError as e:
        raise MpsearchError(f"cannot write the report to {out}: {e.strerror or e}; choose a writable --out") from None
