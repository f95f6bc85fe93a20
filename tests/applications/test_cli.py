"""The CLI in-process through main([...]): JSON outputs, one-line errors, exit codes."""

import json

import pytest

from mpsearch.apps.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_help_and_version(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "profile" in out and "solve" in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "mpsearch 0.1.0" in capsys.readouterr().out


def test_inspect(capsys):
    data = run_json(capsys, "inspect")
    assert data["class"] == "DiTTransformer2DModel"
    assert data["min_bytes"] <= data["uniform_bytes"]["int4"] < data["uniform_bytes"]["int8"] < data["fp_bytes"]
    assert data["max_bytes"] == data["fp_bytes"] == data["uniform_bytes"]["fp"]
    assert {"self_attn", "ffn", "modulation"} <= {l["role"] for l in data["layers"]}


def test_profile_solve_generate_flow(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prof = run_json(capsys, "profile", "--steps", "3", "--seeds", "0", "--labels", "1,7")
    assert prof["profile"] == "profiles/default.sqlite" and prof["units_done"] == 1
    again = run_json(capsys, "profile", "--steps", "3", "--seeds", "0", "--labels", "1,7")
    assert again["units_done"] == 1  # resumed: nothing left to do
    info = run_json(capsys, "inspect")
    sol = run_json(capsys, "solve", "--budget", "60%")
    assert sol["plan"] == "plans/default-60pct.yaml" and sol["status"] == "optimal"
    assert sol["bytes"] <= 0.6 * info["fp_bytes"]
    mid = (info["uniform_bytes"]["int8"] + info["uniform_bytes"]["int4"]) // 2
    # between uniform int8 and int4: only reachable without the default role pins
    sol2 = run_json(capsys, "solve", "--budget", f"{mid}B", "--solver", "highs", "--out", "plans/mid.yaml",
                    "--role-pins", "none")
    assert sol2["bytes"] <= mid
    gen = run_json(capsys, "generate", "--plan", "plans/mid.yaml", "--labels", "3,4", "--steps", "3", "--out", "imgs")
    assert len(gen["images"]) == 2 and gen["denoiser_bytes"] == sol2["bytes"]
    assert (tmp_path / gen["images"][0]).read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(capsys, "solve", "--budget", "1KB")
    assert code == 1 and "smallest feasible" in err and err.count("\n") == 1
    assert "--role-pins none" in err  # the default role pins cost bytes: the error says how small it gets without
    code, _, err = run(capsys, "solve", "--budget", "1KB", "--role-pins", "none")
    assert code == 1 and "--role-pins none" not in err


@pytest.mark.parametrize("argv,code,needle", [
    (["solve", "--budget", "lots"], 2, "does not parse"),
    (["solve", "--budget=-5GB"], 2, "positive"),
    (["solve"], 2, "--budget"),
    (["solve", "--budget", "1GB", "--profile", "nope.sqlite"], 1, "does not exist"),
    (["generate", "--plan", "missing.yaml"], 1, "does not exist"),
    (["inspect", "--model", "/no/such/folder"], 1, "/no/such/folder"),
    (["profile", "--formats", "int3"], 2, "formats"),
    (["profile", "--steps", "0"], 2, "steps"),
    (["profile", "--labels", ""], 2, "labels"),
    (["profile", "--seeds", "-1", "--steps", "1", "--labels", "0"], 2, "expected seeds from 0 to"),
    (["eval", "--seeds", "0,4294967296", "--steps", "1", "--labels", "0"], 2, "expected seeds from 0 to"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, code, needle):
    monkeypatch.chdir(tmp_path)
    got, out, err = run(capsys, *argv)
    assert got == code
    assert needle in err and err.startswith("mpsearch: error:") and err.count("\n") == 1
    assert "Traceback" not in err
    assert not (tmp_path / "plans").exists()
