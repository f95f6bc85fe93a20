"""`mpsearch solve --full-computations/--speedup` and `inspect`'s cache units, in-process."""

import json

from mpsearch.apps.cli import main
from mpsearch.plan import Plan


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_solve_with_cache_writes_one_joint_plan(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_json(capsys, "profile", "--steps", "4", "--seeds", "0", "--labels", "1")
    sol = run_json(capsys, "solve", "--budget", "60%", "--full-computations", "3", "--warmup", "1", "--rounds", "2")
    assert sol["plan"] == "plans/default-60pct-dp3.yaml"
    plan = Plan.load(sol["plan"])
    assert plan.cache["method"] == "dp" and sum(plan.cache["compute"]) == 3 and len(plan.cache["compute"]) == 4
    assert plan.cache["costs"] == "measured-quantized" and plan.cache["unit"]["kind"] == "transformer-residual"
    assert 1 <= len(sol["rounds"]) <= 2 and sol["bytes"] == plan.predicted_bytes
    code = main(["solve", "--budget", "60%", "--speedup", "9", "--warmup", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "out of reach" in err and err.count("\n") == 1


def test_inspect_lists_cache_units_with_shares(capsys):
    data = run_json(capsys, "inspect", "--model", "default-unet")
    units = data["cache_units"]
    assert units[0]["name"] == "deep@down_blocks.0" and 0 < units[1]["share"] < units[0]["share"] < 1
