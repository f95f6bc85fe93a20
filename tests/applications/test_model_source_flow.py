"""Commands take the model from the profile or plan for any model, not only the embedded ones: a tiny DiT saved
as a local pipeline folder is profiled with --model DIR once; solve with a cache schedule, generate --plan and
eval then need no --model; a moved folder is a one-line error naming the recorded source."""

from __future__ import annotations

import json
import shutil

import pytest

from mpsearch.apps.cli import main
from mpsearch.apps.cli.model_source import model_for
from mpsearch.apps.pipeline import EMBEDDED, load_pipeline
from mpsearch.plan import Plan
from mpsearch.profiling.store import Profile

pytest.importorskip("transformers")

from mpsearch.apps.testing import save_tiny_pipeline  # noqa: E402

PROFILE = ["--labels", "1", "--steps", "3", "--seeds", "0", "--guidance", "2.0"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *argv) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny DiT saved as a pipeline folder."""
    return save_tiny_pipeline("dit", tmp_path_factory.mktemp("source") / "model")


def test_load_pipeline_tags_where_the_model_came_from(tiny, monkeypatch):
    monkeypatch.chdir(tiny.parent)
    assert load_pipeline("model").mpsearch_source == str(tiny.resolve())  # a relative path, made absolute
    assert load_pipeline("default").mpsearch_source == "default"


def test_solve_with_a_cache_schedule_and_generate_take_a_folder_model_from_the_profile(tiny, tmp_path, capsys):
    prof = tmp_path / "prof.sqlite"
    ok(capsys, "profile", "--model", tiny, *PROFILE, "--out", prof)
    assert Profile.load(prof).model_source == str(tiny.resolve())
    plan = tmp_path / "cache.yaml"
    ok(capsys, "solve", "--profile", prof, "--budget", "100%", "--full-computations", "2", "--warmup", "1",
       "--out", plan)  # no --model: the profile's
    assert Plan.load(plan).provenance["model_source"] == str(tiny.resolve())
    assert model_for(None, profile=Profile.load(prof)) == str(tiny.resolve())  # what report loads
    gen = ok(capsys, "generate", "--plan", plan, "--labels", "1", "--steps", "3", "--out", tmp_path / "imgs")
    assert len(gen["images"]) == 1 and gen["denoiser_bytes"] > 0


def test_eval_takes_a_folder_model_from_the_plan(tmp_path, capsys):
    # a text-to-image one (eval scores the tiny DiT with the digits classifier, which wants 1 channel)
    model = save_tiny_pipeline("sd3", tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("a red cube\n")
    prompts = ["--prompts", tmp_path / "prompts.txt"]
    prof, plan = tmp_path / "prof.sqlite", tmp_path / "plan.yaml"
    ok(capsys, "profile", "--model", model, *prompts, "--size", "16", "--steps", "2", "--seeds", "0",
       "--guidance", "2.0", "--out", prof)
    ok(capsys, "solve", "--profile", prof, "--budget", "80%", "--out", plan)
    scores = ok(capsys, "eval", "--plan", plan, *prompts, "--seeds", "1000", "--steps", "2")
    assert scores["plan"] == str(plan)


def test_a_moved_model_folder_is_a_one_line_error_naming_the_recorded_source(tiny, tmp_path, capsys):
    model = shutil.copytree(tiny, tmp_path / "model")
    prof = tmp_path / "prof.sqlite"
    ok(capsys, "profile", "--model", model, *PROFILE, "--out", prof)
    plan = tmp_path / "plan.yaml"
    ok(capsys, "solve", "--profile", prof, "--budget", "80%", "--out", plan)
    model.rename(tmp_path / "moved")
    for argv in (["solve", "--profile", prof, "--budget", "100%", "--full-computations", "2", "--warmup", "1",
                  "--out", tmp_path / "c.yaml"],
                 ["generate", "--plan", plan, "--labels", "1", "--steps", "3", "--out", tmp_path / "imgs"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
        assert str(model.resolve()) in err and "--model" in err and "no longer there" in err, err
    assert not (tmp_path / "c.yaml").exists()
    # --model names it again, and a new profile run records where it is now
    ok(capsys, "generate", "--model", tmp_path / "moved", "--plan", plan, "--labels", "1", "--steps", "3",
       "--out", tmp_path / "imgs")
    ok(capsys, "profile", "--model", tmp_path / "moved", *PROFILE, "--out", prof)
    assert Profile.load(prof).model_source == str((tmp_path / "moved").resolve())


def test_an_explicit_model_that_contradicts_the_record_stays_an_error(tiny, tmp_path, capsys):
    prof = tmp_path / "prof.sqlite"
    ok(capsys, "profile", "--model", tiny, *PROFILE, "--out", prof)
    code, _, err = run(capsys, "solve", "--profile", prof, "--budget", "100%", "--full-computations", "2",
                       "--warmup", "1", "--model", "default", "--out", tmp_path / "c.yaml")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--model default" in err, err


def test_the_profile_digest_does_not_depend_on_the_folder_path(tiny, tmp_path, capsys):
    a, b = shutil.copytree(tiny, tmp_path / "a"), shutil.copytree(tiny, tmp_path / "elsewhere" / "b")
    ok(capsys, "profile", "--model", a, *PROFILE, "--out", tmp_path / "a.sqlite")
    ok(capsys, "profile", "--model", b, *PROFILE, "--out", tmp_path / "b.sqlite")
    pa, pb = Profile.load(tmp_path / "a.sqlite"), Profile.load(tmp_path / "b.sqlite")
    assert pa.model_source != pb.model_source
    assert pa.digest == pb.digest


def test_a_gone_folder_falls_back_to_the_embedded_model_it_holds(tmp_path, capsys):
    copy = shutil.copytree(EMBEDDED["default"], tmp_path / "my-default")
    prof = tmp_path / "prof.sqlite"
    ok(capsys, "profile", "--model", copy, "--labels", "1", "--steps", "2", "--seeds", "0", "--out", prof)
    shutil.rmtree(copy)
    assert model_for(None, profile=Profile.load(prof)) == "default"
