"""Text-to-image pipelines with no --prompts: profiling measures built-in calibration prompts (and records
which), evaluation and generation use built-in held-out prompts; class-conditional pipelines keep labels."""

import argparse
import json

import numpy as np
import pytest

import mpsearch
from mpsearch.apps.cli import main
from mpsearch.apps.cli.common import condition_list
from mpsearch.profiling.prompting import calibration_config
from mpsearch.profiling.store import stored_config
from mpsearch.prompts import builtin_prompts, builtin_set

pytest.importorskip("transformers")

from mpsearch.apps.testing import build_tiny_pipeline, save_tiny_pipeline

CALIBRATION_4 = list(builtin_prompts(4).prompts)
HELDOUT_4 = list(builtin_prompts(4, "heldout").prompts)
TINY = ["--steps", "1", "--seeds", "0", "--size", "16"]


@pytest.fixture(scope="module")
def pixart_dir(tmp_path_factory):
    return str(save_tiny_pipeline("pixart-sigma", tmp_path_factory.mktemp("tiny") / "pixart"))


def test_cli_profile_without_prompts_uses_and_records_the_builtin_set(pixart_dir, tmp_path, capsys):
    out = str(tmp_path / "p.sqlite")
    assert main(["profile", "--model", pixart_dir, *TINY, "--out", out]) == 0
    assert "prompts: 4 of the built-in calibration set (seed 0)" in capsys.readouterr().err
    cfg = stored_config(out)
    assert cfg["prompts"] == CALIBRATION_4 and cfg["prompt_set"] == "4 of the built-in calibration set (seed 0)"
    assert "labels" not in cfg or not cfg["labels"]
    # resuming with the same set (named as a count) is fine; with other prompts it is refused, in one line
    assert main(["profile", "--model", pixart_dir, *TINY, "--prompts", "4", "--out", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["units_done"] == 1
    assert main(["profile", "--model", pixart_dir, *TINY, "--prompts", "5", "--out", out]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "another configuration" in err[-1] and "prompts" in err[-1]


def test_cli_profile_with_a_file_records_no_builtin_set(pixart_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red cube\nan astronaut on a horse\n")
    out = str(tmp_path / "p.sqlite")
    assert main(["profile", "--model", pixart_dir, *TINY, "--prompts", str(tmp_path / "p.txt"), "--out", out]) == 0
    cfg = stored_config(out)
    assert cfg["prompts"] == ["a red cube", "an astronaut on a horse"] and "prompt_set" not in cfg


def test_python_profile_takes_none_a_count_a_list_or_a_path(tmp_path, capsys):
    pipe = build_tiny_pipeline("pixart-sigma")
    kw = {"steps": 1, "seeds": (0,), "size": 16}
    prof = mpsearch.profile(pipe, out=tmp_path / "a.sqlite", **kw)
    assert prof.config["prompts"] == CALIBRATION_4 and "built-in" in prof.config["prompt_set"]
    assert "prompts: 4 of the built-in calibration set" in capsys.readouterr().err
    prof = mpsearch.profile(pipe, out=tmp_path / "b.sqlite", prompts=2, progress=False, **kw)
    assert prof.config["prompts"] == list(builtin_prompts(2).prompts)
    (tmp_path / "p.txt").write_text("a blue ball\n")
    for i, spec in enumerate([["a blue ball"], tmp_path / "p.txt", str(tmp_path / "p.txt")]):
        prof = mpsearch.profile(pipe, out=tmp_path / f"c{i}.sqlite", prompts=spec, progress=False, **kw)
        assert prof.config["prompts"] == ["a blue ball"] and "prompt_set" not in prof.config


def test_class_conditional_pipelines_keep_their_labels(dit_pipe):
    config, said = calibration_config(dit_pipe, None, {})
    assert said is None and config.labels == tuple(range(10)) and not config.prompts
    args = argparse.Namespace(prompts=None, labels=list(range(10)), json=True)
    assert condition_list(args, dit_pipe) == list(range(10))


def test_explicit_labels_on_a_text_pipeline_stay_an_error_naming_prompts():
    pipe = build_tiny_pipeline("pixart-sigma")
    config, said = calibration_config(pipe, None, {"labels": (1, 2)})
    assert said is None and not config.prompts  # generating then names --prompts (test_archs_flow)


def test_generate_defaults_to_heldout_prompts(pixart_dir, tmp_path, capsys, monkeypatch):
    seen = []

    def fake_generate(pipe, conditions, *a, **k):
        seen.append(list(conditions))
        return np.zeros((len(conditions), 16, 16, 3))

    monkeypatch.setattr("mpsearch.apps.cli.inspecting.generate", fake_generate)
    assert main(["generate", "--model", pixart_dir, "--steps", "1", "--out", str(tmp_path / "imgs")]) == 0
    assert seen == [HELDOUT_4] and not set(seen[0]) & set(builtin_set("calibration"))
    assert "prompts: 4 of the built-in held-out set (seed 0)" in capsys.readouterr().err
    assert main(["generate", "--model", pixart_dir, "--prompts", "2", "--out", str(tmp_path / "imgs")]) == 0
    assert seen[-1] == list(builtin_prompts(2, "heldout").prompts)


def test_eval_defaults_to_heldout_prompts(pixart_dir, capsys, monkeypatch):
    seen = []

    def fake_generate_many(pipe, labels, seeds, *a, **k):
        seen.append(list(labels))
        return np.zeros((len(labels) * len(seeds), 16, 16, 3))

    monkeypatch.setattr("mpsearch.apps.evaluate.generate_many", fake_generate_many)
    assert main(["eval", "--model", pixart_dir, "--steps", "1", "--seeds", "1000", "--json"]) == 0
    assert seen == [HELDOUT_4, HELDOUT_4]  # full precision and the plan; no digit classifier on prompts
    assert "class_agreement" not in json.loads(capsys.readouterr().out)
    seen.clear()
    mpsearch.apps.evaluate.evaluate_plan(build_tiny_pipeline("pixart-sigma"), None, steps=1, seeds=(1000,))
    assert seen == [HELDOUT_4, HELDOUT_4]


def test_report_images_default_to_heldout_prompts(pixart_dir, tmp_path, capsys, monkeypatch):
    seen = []

    def fake_generate(pipe, conditions, *a, **k):
        seen.append(list(conditions))
        return np.zeros((len(conditions), 16, 16, 3))

    monkeypatch.setattr("mpsearch.apps.report.gather.generate", fake_generate)
    assert main(["report", "--model", pixart_dir, "--steps", "1", "--points", "0", "--out", str(tmp_path / "r")]) == 0
    assert seen and all(c == HELDOUT_4 for c in seen)  # full precision and each uniform baseline
    assert "report: prompts: 4 of the built-in held-out set (seed 0)" in capsys.readouterr().err
