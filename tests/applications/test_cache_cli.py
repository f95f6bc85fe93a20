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


def test_commands_take_the_model_from_the_profile_or_plan(capsys, tmp_path, monkeypatch):
    """A UNet profile solved with a cache and no --model used to load the default DiT and fail ("plan is for a
    UNet2DModel, the model is a DiTTransformer2DModel"); now the profile's (or plan's) model is used, and a
    --model that contradicts it is a one-line error. The reuse costs are stood in for (only the CLI is tested)."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    cost = np.triu(np.full((4, 4), 0.5), 1)
    monkeypatch.setattr("mpsearch.allocation.joint.measure_costs", lambda *a, **k: cost)
    run_json(capsys, "profile", "--model", "default-unet", "--steps", "4", "--seeds", "0", "--labels", "1",
             "--out", "unet.sqlite")
    sol = run_json(capsys, "solve", "--profile", "unet.sqlite", "--budget", "100%", "--full-computations", "3",
                   "--warmup", "1", "--out", "u.yaml")
    plan = Plan.load(sol["plan"])
    assert plan.model_class == "UNet2DModel" and plan.cache["unit"]["name"] == "deep@down_blocks.0"  # not a DiT unit
    code = main(["solve", "--profile", "unet.sqlite", "--budget", "100%", "--full-computations", "3", "--warmup", "1",
                 "--model", "default", "--out", "d.yaml"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--model default is a DiTTransformer2DModel" in err
    assert "profile unet.sqlite was made for a UNet2DModel" in err and not (tmp_path / "d.yaml").exists()
    gen = run_json(capsys, "generate", "--plan", "u.yaml", "--labels", "1", "--steps", "2", "--out", "imgs")
    assert len(gen["images"]) == 1
    scores = run_json(capsys, "eval", "--plan", "u.yaml", "--labels", "1", "--seeds", "1000", "--steps", "2")
    assert scores["plan"] == "u.yaml"
    code = main(["generate", "--plan", "u.yaml", "--model", "default", "--labels", "1", "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "plan u.yaml was made for a UNet2DModel" in err and err.count("\n") == 1
