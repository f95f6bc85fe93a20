"""solve --search optuna end to end on a tiny DiT: real generations, a local study file that resumes."""

from __future__ import annotations

import json

from mpsearch import cli
from mpsearch.plan import Plan


def test_search_optuna_refines_and_resumes(dit_pipe, tmp_path, monkeypatch, capsys):
    from mpsearch.profiler import profile

    profile(dit_pipe, out=tmp_path / "p.sqlite", steps=3, seeds=(0,), labels=(1, 2), progress=False)
    monkeypatch.setattr("mpsearch.pipeline.load_pipeline", lambda *a, **k: dit_pipe)
    monkeypatch.chdir(tmp_path)
    argv = ["solve", "--profile", "p.sqlite", "--budget", "45%", "--no-default-pins", "--search", "optuna",
            "--search-steps", "2", "--json"]
    assert cli.main([*argv, "--trials", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["search"]["trials"] == 3 and first["search"]["storage"] == "sqlite:///studies/p.db"
    assert (tmp_path / "studies" / "p.db").is_file()
    assert cli.main([*argv, "--trials", "5"]) == 0  # the same study, continued to 5 trials
    again = json.loads(capsys.readouterr().out)
    assert again["search"]["trials"] == 5 and again["search"]["study_name"] == first["search"]["study_name"]
    plan = Plan.load(again["plan"])
    assert plan.provenance["solver"] == "optuna" and plan.predicted_bytes <= plan.budget["bytes"]
