"""The built-in prompt set (calibration and held-out parts) and how --prompts N|FILE chooses prompts."""

from pathlib import Path

import pytest
import tomllib

from mpsearch.apps.cli import main
from mpsearch.errors import UsageError
from mpsearch.prompts import (
    DEFAULT_PROFILE_PROMPTS,
    PROMPTS_DIR,
    builtin_prompts,
    builtin_set,
    choose_prompts,
    read_prompts,
)

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_set_has_enough_unique_prompts():
    cal, held = builtin_set("calibration"), builtin_set("heldout")
    both = cal + held
    assert len(set(both)) == len(both) >= 250
    assert all(p.strip() == p and p for p in both)
    assert len(held) >= 50 and len(cal) >= 200


def test_calibration_and_heldout_are_disjoint():
    assert not set(builtin_set("calibration")) & set(builtin_set("heldout"))


def test_builtin_files_ship_with_the_package_and_say_their_license():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mpsearch"]
    assert "assets/**/*" in globs and PROMPTS_DIR == ROOT / "mpsearch" / "assets" / "prompts"
    for name in ("calibration.txt", "heldout.txt"):
        head = (PROMPTS_DIR / name).read_text().splitlines()[:2]
        assert "written for the mpsearch project" in head[0] and "license" in " ".join(head)
    assert "license" in (PROMPTS_DIR / "README.md").read_text()


def test_a_count_is_a_deterministic_nested_subset():
    five = builtin_prompts(5)
    assert five == builtin_prompts(5) and five == choose_prompts(5) == choose_prompts("5")
    assert len(set(five.prompts)) == 5 and set(five.prompts) <= set(builtin_set("calibration"))
    assert set(builtin_prompts(4).prompts) < set(five.prompts)  # a larger subset keeps the smaller one
    assert five.builtin and five.source == "5 of the built-in calibration set (seed 0)"
    assert builtin_prompts(5, seed=1).prompts != five.prompts
    held = builtin_prompts(5, "heldout")
    assert set(held.prompts) <= set(builtin_set("heldout")) and "held-out" in held.source
    assert choose_prompts(None) is None and choose_prompts(None, default=DEFAULT_PROFILE_PROMPTS) == builtin_prompts(4)


@pytest.mark.parametrize("n", [0, -1, 10_000, True, 2.5])
def test_a_bad_count_is_a_one_line_error(n):
    with pytest.raises(UsageError) as e:
        choose_prompts(n)
    assert "\n" not in str(e.value) and "prompts" in str(e.value)


def test_a_file_or_a_list_still_works(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# one per line\na red cube\n\n  an astronaut on a horse  \n")
    chosen = choose_prompts(str(f))
    assert chosen.prompts == ("a red cube", "an astronaut on a horse") and not chosen.builtin
    assert choose_prompts(f) == chosen and read_prompts(f) == list(chosen.prompts)
    assert choose_prompts(["a", "b"]).prompts == ("a", "b")
    with pytest.raises(UsageError):
        choose_prompts(["a", ""])


@pytest.mark.parametrize("content, expect", [(None, "cannot read"), ("\n# nothing\n", "no prompts"),
                                             (b"\xff\xfe a cat\n", "not UTF-8")])
def test_prompt_file_errors_are_one_line(tmp_path, capsys, content, expect):
    f = tmp_path / "p.txt"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    code = main(["profile", "--prompts", str(f), "--out", str(tmp_path / "p.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and expect in err and err.count("\n") == 1, err
    assert not (tmp_path / "p.sqlite").exists()


@pytest.mark.parametrize("argv", [["profile", "--prompts", "0"], ["eval", "--prompts", "0"],
                                  ["profile", "--prompts", "100000"]])
def test_a_bad_count_on_the_command_line_is_a_one_line_error(argv, capsys, tmp_path):
    code = main([*argv, *(["--out", str(tmp_path / "p.sqlite")] if argv[0] == "profile" else [])])
    err = capsys.readouterr().err
    assert code == 2 and "prompts" in err and err.count("\n") == 1, err
