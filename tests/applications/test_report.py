"""`mpsearch report`: a self-contained HTML page whose figures exist, load in a browser, and never half-written."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny DiT pipeline, its 3-step profile, a solved plan and the same plan with a cache schedule."""
    from conftest import _scheduler, tiny_dit

    import mpsearch
    from mpsearch.apps.pipeline import DigitsPipeline
    from mpsearch.apps.profile import profile
    from mpsearch.cache_units import cache_units
    from mpsearch.models import get_denoiser

    root = tmp_path_factory.mktemp("report")
    pipe = DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit())
    pipe.set_progress_bar_config(disable=True)
    prof = profile(pipe, out=root / "p.sqlite", labels=(1, 2), seeds=(0,), steps=3, progress=False)
    plan = mpsearch.solve(prof, budget="60%")
    plan.save(root / "half.yaml")
    cache = {"method": "uniform", "unit": cache_units(get_denoiser(pipe))[0].to_dict(), "compute": [True, False, True]}
    dataclasses.replace(plan, cache=cache).save(root / "cached.yaml")  # with the variants' calibration file
    return {"root": root, "pipe": pipe, "profile": prof, "plans": [root / "half.yaml", root / "cached.yaml"]}


@pytest.fixture(scope="module")
def rendered(tiny):
    from mpsearch.apps.report import report

    out = tiny["root"] / "site"
    r = report(tiny["profile"], tiny["plans"], tiny["pipe"], out=out, labels=(0, 1, 2), seed=0, points=4)
    return out, r


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img\s[^>]*src="([^"]+)"', page)


def test_report_page_references_existing_pngs_only(tiny, rendered):
    out, r = rendered
    page = (out / "index.html").read_text(encoding="utf-8")
    sources = _img_sources(page)
    expected = {"frontier.png", "plan_layers.png", "cache_timeline.png", "images.png", "sensitivity_rel_mse.png",
                "sensitivity_sqnr.png", "sensitivity_cosine.png", "sensitivity_gn.png"}
    assert set(sources) == expected
    for src in sources:  # relative, in the same folder, real PNG files
        assert "/" not in src and ":" not in src
        assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # no network resources
    assert {Path(f).name for f in r["files"]} == expected | {"index.html", "report.json"}
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(f).name for f in r["files"])
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporary folders left

    summary = json.loads((out / "report.json").read_text())
    names = [v["name"] for v in summary["variants"]]
    assert names == ["full precision", "half", "cached", "uniform int8", "uniform nvfp4", "uniform int4"]
    fp, half = summary["variants"][0], summary["variants"][1]
    assert fp["scores"]["bytes"] == fp["bytes"] and "mse" not in fp["scores"]
    assert half["bytes"] == tiny["profile"].info.bytes_for(dict(zip(tiny["profile"].layer_names,
                                                                    r["data"].variants[1].layers)))
    assert half["scores"]["bytes"] < fp["bytes"] and 0 <= half["scores"]["mse"] and half["scores"]["ssim"] <= 1
    assert half["objective"] == pytest.approx(json.loads(json.dumps(r["data"].variants[1].objective)))
    assert summary["variants"][2]["cache"] == [True, False, True]
    curves = summary["frontier"]["curves"]
    assert set(summary["frontier"]["uniform"]) >= {"fp", "int8"} and curves["default role pins"]
    smallest = {k: min(p["total_bytes"] for p in c) for k, c in curves.items()}
    assert smallest["no pins"] <= smallest["default role pins"]  # pins only take choices away
    for name in ("full precision", "uniform int8", "half", "cached"):  # every variant is named on the page
        assert name in page


def test_an_error_leaves_no_report_and_an_old_report_is_replaced(tiny, tmp_path, monkeypatch):
    from mpsearch.apps import report as rep
    from mpsearch.errors import UsageError

    data = rep.gather_report(tiny["profile"], tiny["plans"][:1], None, points=3)
    assert not data.images and data.variants[1].name == "half"

    def boom(*_a, **_k):
        raise RuntimeError("drawing failed")

    out = tmp_path / "site"
    with monkeypatch.context() as m:
        m.setattr("mpsearch.apps.report.render.network_png", boom)  # where render_report looks it up
        with pytest.raises(RuntimeError, match="drawing failed"):
            rep.render_report(data, out)
    assert list(tmp_path.iterdir()) == []  # neither the report nor its temporary folder

    (out).mkdir()
    (out / "index.html").write_text("old")
    (out / "stale.png").write_bytes(b"old")
    r = rep.render_report(data, out)
    assert (out / "index.html").read_text() != "old" and not (out / "stale.png").exists()
    assert "images.png" not in {Path(f).name for f in r["files"]}  # no model: no image grid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]

    (out / "notes.txt").write_text("mine")  # a folder that is not only a report is never replaced
    with pytest.raises(UsageError, match="not part of a report"):
        rep.render_report(data, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_report_gets_the_users_umask(tiny, tmp_path):
    from mpsearch.apps import report as rep

    data = rep.gather_report(tiny["profile"], tiny["plans"][:1], None, points=3)
    old = os.umask(0o027)
    try:
        r = rep.render_report(data, tmp_path / "site")
    finally:
        os.umask(old)
    assert (tmp_path / "site").stat().st_mode & 0o777 == 0o750
    assert r["files"] and all(Path(f).stat().st_mode & 0o777 == 0o640 for f in r["files"])


def test_cli_report_json_and_one_line_errors(tiny, tmp_path, capsys):
    from mpsearch.apps.cli import main

    out = tmp_path / "r"
    plan = str(tiny["plans"][0])
    code = main(["report", "--profile", str(tiny["profile"].path), "--plan", plan, "--no-images", "--points", "3",
                 "--out", str(out), "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(stdout)
    assert data["index"] == str(out / "index.html") and all(Path(f).is_file() for f in data["files"])
    assert {"frontier.png", "plan_layers.png", "sensitivity_rel_mse.png"} <= {Path(f).name for f in data["files"]}

    # a plan for another model: one line, exit 1, nothing written
    other = tmp_path / "other.yaml"
    text = Path(plan).read_text()
    fingerprint = tiny["profile"].info.fingerprint
    other.write_text(text.replace(fingerprint, "0" * len(fingerprint)))
    code = main(["report", "--profile", str(tiny["profile"].path), "--plan", str(other), "--no-images",
                 "--out", str(tmp_path / "bad")])
    _, err = capsys.readouterr()
    assert code == 1 and "another model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    code = main(["report", "--no-images", "--profile", str(tmp_path / "missing.sqlite")])
    _, err = capsys.readouterr()
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_cli_report_out_is_a_file_exits_1_like_every_unwritable_out(tiny, tmp_path, capsys):
    """--out naming a file cannot be written: exit 1 (it was a usage error, exit 2), the file untouched."""
    from mpsearch.apps.cli import main

    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    code = main(["report", "--profile", str(tiny["profile"].path), "--no-images", "--points", "2",
                 "--out", str(blocker)])
    _, err = capsys.readouterr()
    assert code == 1 and "is a file" in err and "--out" in err and len(err.strip().splitlines()) == 1, err
    assert blocker.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute('src'); });
  var sizes = imgs.map(function (i) { return i.naturalWidth + 'x' + i.naturalHeight; });
  var pre = document.createElement('pre');
  pre.id = 'img-check';
  pre.textContent = JSON.stringify({count: imgs.length, broken: broken, sizes: sizes});
  document.body.appendChild(pre);
});
</script>
<img src="no-such-figure.png" alt="control">
"""


def test_report_figures_load_in_a_headless_browser(rendered, tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("MPSEARCH_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"{CHROMIUM} is missing but MPSEARCH_REQUIRE_CHROMIUM=1 (CI installs it in .ci/run)")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium) to render the report")
    out, _ = rendered
    site = tmp_path / "site"
    shutil.copytree(out, site)
    page = (site / "index.html").read_text(encoding="utf-8")
    n_figures = len(_img_sources(page))
    # the same page, plus a script that records which images loaded and one image that cannot (the control)
    (site / "check.html").write_text(page.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
           "--dump-dom", (site / "check.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    found = re.search(r'<pre id="img-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"chromium exited {proc.returncode} without the check's result: {proc.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["count"] == n_figures + 1
    assert result["broken"] == ["no-such-figure.png"]  # every figure loaded; the control did not
    assert all(s != "0x0" for s in result["sizes"][:-1])


def test_a_killed_report_replacement_leaves_nothing_the_next_run_keeps(tiny, tmp_path):
    """The older report is moved aside into a staging folder named for its process: one left by a process that
    was killed mid-replacement is removed by the next report written there."""
    import socket

    from mpsearch.apps import report as rep

    dead = 2**22 + 17  # beyond Linux's default pid_max: no such process
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead += 1
    left = tmp_path / f".site.staging-{dead}@{socket.gethostname()}.ab12.old"
    (left / "folder").mkdir(parents=True)
    (left / "folder" / "index.html").write_text("killed mid-replacement")
    data = rep.gather_report(tiny["profile"], tiny["plans"][:1], None, points=3)
    rep.render_report(data, tmp_path / "site")
    rep.render_report(data, tmp_path / "site")  # replaces the first: its aside folder goes too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
