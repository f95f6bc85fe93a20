"""Hostile inputs to the `mpsearch` command, family by family (plans, profiles, exported folders, prompt files,
arguments), as tables: one row = name, setup, command, expected exit code.

Every row must be refused with exit code 1 (failure) or 2 (usage), exactly one stderr line starting with
"mpsearch: error:" that names no Python exception class (an mpsearch message, not a crash), nothing written or
changed under the working folder (no half-written --out, inputs byte-identical), and, for commands that load a
model, the model's files untouched. Rows that could hang or eat memory (alias bombs, /dev/zero, huge files) run
in a real process with a deadline and a memory limit. test_bad_input.py holds the older cases; none is repeated.

    OMP_NUM_THREADS=1 python -m pytest -q tests/applications/test_hostile_inputs.py
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from cli_helpers import exception_names, run, run_process, snapshot
from conftest import _scheduler, tiny_dit

import mpsearch
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.apps.profile import profile
from mpsearch.plan import Plan
from mpsearch.runtime.checkpoint import MANIFEST, export

ASSETS = Path(mpsearch.__file__).parent / "assets"
GEN = ["--labels", "0", "--steps", "1", "--seed", "0"]


# ---------------------------------------------------------------- shared inputs (built once)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A profile and plan of the default DiT, its export, a partial (one shard of two) profile, and a profile of
    another model (a tiny DiT saved as a pipeline folder)."""
    d = tmp_path_factory.mktemp("hostile-base")
    pipe = load_pipeline("default")
    prof = profile(pipe, out=d / "prof.sqlite", steps=3, seeds=(0,), labels=(0,), progress=False)
    plan = mpsearch.solve(prof, "60%")
    plan.save(d / "plan.yaml")
    export(pipe, plan, d / "q")
    profile(pipe, out=d / "partial.sqlite", steps=2, seeds=(0, 1), labels=(0,), shard=(0, 2), progress=False)
    tiny = mpsearch.DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit())
    tiny.set_progress_bar_config(disable=True)
    tiny.save_pretrained(d / "tiny")
    profile(tiny, out=d / "tiny.sqlite", steps=2, seeds=(0,), labels=(0,), progress=False)
    return d


def _plan_dict(base) -> dict:
    return yaml.safe_load((base / "plan.yaml").read_text())


def _write(d: Path, name: str, data) -> str:
    p = d / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return name


def _plan_text(text_of):
    """A plan file whose text is ``text_of(original plan text)``."""
    return lambda d, b: {"p": _write(d, "p.yaml", text_of((b / "plan.yaml").read_text()))}


def _plan(mutate):
    """A plan file: the base plan's mapping after ``mutate(data)``."""
    def setup(d, b):
        data = _plan_dict(b)
        mutate(data)
        return {"p": _write(d, "p.yaml", data)}
    return setup


def _quant_layer(data) -> str:
    return next(n for n, f in data["layers"].items() if f in ("int8", "nvfp4"))


def _override(steps, twice=False):
    def mutate(data):
        ov = {"steps": steps, "activations": {_quant_layer(data): "fp"}}
        data["overrides"] = [ov, dict(ov)] if twice else [ov]
    return mutate


def _drop_layer(data):
    data["layers"].pop(_quant_layer(data))


def _bomb(text: str) -> str:
    """The plan with 10 levels of nested YAML aliases (10^10 leaves) under provenance."""
    lines = ["  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    head = text.split("\nprovenance:")[0]
    return head + "\nprovenance:\n" + "\n".join(lines) + "\n"


def _symlink(target, name):
    def setup(d, b):
        os.symlink(target, d / name)
        return {"p": name}
    return setup


def _sparse(name, size, head=b""):
    def setup(d, b):
        with open(d / name, "wb") as f:
            f.write(head)
            f.truncate(size)
        return {"p": name}
    return setup


def _long_plan(d, b):
    """A plan that parses (a valid plan, then megabytes of comment lines) but is far larger than any plan."""
    text = (b / "plan.yaml").read_text()
    with open(d / "p.yaml", "w") as f:
        f.write(text)
        f.writelines(["# " + "x" * 1000 + "\n"] * (64 * 1024))  # 64 MB
    return {"p": "p.yaml"}


PLAN_GEN = ["generate", "--plan", "{p}", *GEN, "--out", "imgs"]
PLAN_EXPORT = ["export", "--plan", "{p}", "--out", "qout"]
PLAN_EVAL = ["eval", "--plan", "{p}", "--labels", "0", "--seeds", "1000", "--steps", "1"]

# (name, setup(d, base) -> placeholders, argv, exit code)
PLAN_CASES = [
    ("plan-not-yaml", _plan_text(lambda t: "{{{ this: is: not yaml"), PLAN_EXPORT, 1),
    ("plan-binary-export", lambda d, b: {"p": _write(d, "p.yaml", bytes(range(256)) * 8)}, PLAN_EXPORT, 1),
    ("plan-binary-nul", lambda d, b: {"p": _write(d, "p.yaml", b"schema_version: 1\n\x00\x00\x00")}, PLAN_EVAL, 1),
    ("plan-empty-export", lambda d, b: {"p": _write(d, "p.yaml", "")}, PLAN_EXPORT, 1),
    ("plan-only-comment", lambda d, b: {"p": _write(d, "p.yaml", "# nothing here\n")}, PLAN_GEN, 1),
    ("plan-a-list-eval", lambda d, b: {"p": _write(d, "p.yaml", "- schema_version\n- layers\n")}, PLAN_EVAL, 1),
    ("plan-a-scalar", lambda d, b: {"p": _write(d, "p.yaml", "42\n")}, PLAN_GEN, 1),
    ("plan-aliases-small", _plan_text(lambda t: t.split("\nprovenance:")[0]
                                      + "\nprovenance:\n  a: &x {solver: ilp}\n  b: *x\n"), PLAN_GEN, 1),
    ("plan-unknown-top-key-export", _plan(lambda x: x.update(comment="hi")), PLAN_EXPORT, 1),
    ("plan-unknown-budget-key", _plan(lambda x: x["budget"].update(extra=1)), PLAN_GEN, 1),
    ("plan-unknown-format-export", _plan(lambda x: x["layers"].update({_quant_layer(x): "fp4"})), PLAN_EXPORT, 1),
    ("plan-format-none", _plan(lambda x: x["layers"].update({_quant_layer(x): None})), PLAN_GEN, 1),
    ("plan-unknown-layer-export", _plan(lambda x: x["layers"].update({"transformer_blocks.9.ff.net.2": "int8"})),
     PLAN_EXPORT, 1),
    ("plan-missing-layer", _plan(_drop_layer), PLAN_GEN, 1),
    ("plan-missing-layer-export", _plan(_drop_layer), PLAN_EXPORT, 1),
    ("plan-fingerprint-mismatch-export", _plan(lambda x: x["model"].update(fingerprint="sha256:" + "0" * 24)),
     PLAN_EXPORT, 1),
    ("plan-fingerprint-not-string", _plan(lambda x: x["model"].update(fingerprint=12345)), PLAN_GEN, 1),
    ("plan-schema-version-3", _plan(lambda x: x.update(schema_version=3)), PLAN_EXPORT, 1),
    ("plan-schema-version-string", _plan(lambda x: x.update(schema_version="one")), PLAN_EVAL, 1),
    ("plan-schema-version-bool", _plan(lambda x: x.update(schema_version=True)), PLAN_GEN, 1),
    ("plan-schema-version-float", _plan(lambda x: x.update(schema_version=1.0)), PLAN_GEN, 1),
    ("plan-bytes-negative", _plan(lambda x: x["predictions"].update(bytes=-5)), PLAN_GEN, 1),
    ("plan-bytes-1e40", _plan(lambda x: x["predictions"].update(bytes=10 ** 40)), PLAN_GEN, 1),
    ("plan-bytes-1e40-float", _plan(lambda x: x["predictions"].update(bytes=1e40)), PLAN_EXPORT, 1),
    ("plan-bytes-true", _plan(lambda x: x["predictions"].update(bytes=True)), PLAN_GEN, 1),
    ("plan-bytes-nan", _plan(lambda x: x["predictions"].update(bytes=float("nan"))), PLAN_GEN, 1),
    ("plan-budget-bytes-negative", _plan(lambda x: x["budget"].update(bytes=-1)), PLAN_GEN, 1),
    ("plan-override-negative", _plan(_override([-1, 1])), PLAN_GEN, 1),
    ("plan-override-1e9", _plan(_override([0, 10 ** 9])), PLAN_GEN, 1),
    ("plan-override-strings", _plan(_override(["0", "1"])), PLAN_GEN, 1),
    ("plan-override-bools", _plan(_override([False, True])), PLAN_GEN, 1),
    ("plan-override-duplicates", _plan(_override([0, 1], twice=True)), PLAN_GEN, 1),
    ("plan-override-not-a-list", _plan(lambda x: x.update(overrides={"steps": [0, 1]})), PLAN_GEN, 1),
    ("plan-directory-export", lambda d, b: (d / "pdir").mkdir() or {"p": "pdir"}, PLAN_EXPORT, 1),
    ("plan-symlink-loop", lambda d, b: os.symlink("p.yaml", d / "p.yaml") or {"p": "p.yaml"}, PLAN_GEN, 1),
]

# rows that could hang or exhaust memory on a careless reader: a real process with a deadline and a memory cap
PLAN_PROCESS_CASES = [
    ("plan-not-yaml-process", _plan_text(lambda t: t + "\n{{{ broken"), PLAN_GEN, 1),  # the harness's control
    ("plan-billion-laughs", _plan_text(_bomb), PLAN_GEN, 1),
    ("plan-symlink-dev-zero", _symlink("/dev/zero", "p.yaml"), PLAN_GEN, 1),
    ("plan-huge-sparse", _sparse("p.yaml", 2 << 30, b"schema_version: 1\n# "), PLAN_GEN, 1),
    ("plan-huge-comments", _long_plan, PLAN_GEN, 1),
]


# ---------------------------------------------------------------- profiles


def _copy(name, dest):
    def setup(d, b):
        shutil.copy(b / name, d / dest)
        return {"pf": dest}
    return setup


def _sql(*statements):
    def setup(d, b):
        shutil.copy(b / "prof.sqlite", d / "pf.sqlite")
        conn = sqlite3.connect(d / "pf.sqlite")
        with conn:
            for s in statements:
                conn.execute(s)
        conn.close()
        return {"pf": "pf.sqlite"}
    return setup


def _truncate_sqlite(keep):
    def setup(d, b):
        raw = (b / "prof.sqlite").read_bytes()
        _write(d, "pf.sqlite", raw[:keep])
        return {"pf": "pf.sqlite"}
    return setup


SOLVE = ["solve", "--profile", "{pf}", "--budget", "60%", "--out", "p.yaml"]

PROFILE_CASES = [
    ("profile-not-sqlite", lambda d, b: {"pf": _write(d, "pf.sqlite", "schema_version: 1\nlayers: {}\n")}, SOLVE, 1),
    ("profile-sqlite-header-only", _truncate_sqlite(100), SOLVE, 1),
    ("profile-truncated-one-page", _truncate_sqlite(4096), SOLVE, 1),
    ("profile-empty-pareto", lambda d, b: {"pf": _write(d, "pf.sqlite", b"")},
     ["solve", "--profile", "{pf}", "--pareto", "3", "--out", "front"], 1),
    ("profile-of-another-model-cache", _copy("tiny.sqlite", "pf.sqlite"),
     ["solve", "--profile", "{pf}", "--budget", "100%", "--full-computations", "2", "--warmup", "1",
      "--model", "default", "--out", "p.yaml"], 1),
    ("profile-of-another-model-compute", _copy("tiny.sqlite", "pf.sqlite"),
     ["solve", "--profile", "{pf}", "--budget", "60%", "--compute", "90%", "--model", "default", "--out", "p.yaml"],
     1),
    ("profile-of-another-model-report", _copy("tiny.sqlite", "pf.sqlite"),
     ["report", "--profile", "{pf}", "--model", "default", "--points", "2", "--out", "rep"], 1),
    ("profile-with-trigger", _sql("CREATE TRIGGER t AFTER INSERT ON units BEGIN DELETE FROM local; END"), SOLVE, 1),
    ("profile-with-view", _sql("CREATE VIEW v AS SELECT * FROM local"), SOLVE, 1),
    ("profile-schema-string", _sql("UPDATE meta SET value = '\"two\"' WHERE key = 'schema'"), SOLVE, 1),
    ("profile-schema-zero", _sql("UPDATE meta SET value = '0' WHERE key = 'schema'"), SOLVE, 1),
    ("profile-partial", _copy("partial.sqlite", "pf.sqlite"), SOLVE, 1),
    ("profile-partial-pareto", _copy("partial.sqlite", "pf.sqlite"),
     ["solve", "--profile", "{pf}", "--pareto", "3", "--out", "front"], 1),
    ("profile-directory-report", lambda d, b: (d / "pfdir").mkdir() or {"pf": "pfdir"},
     ["report", "--profile", "{pf}", "--no-images", "--points", "2", "--out", "rep"], 1),
    ("profile-merge-a-directory", lambda d, b: (d / "pfdir").mkdir() or {"pf": "pfdir"},
     ["profile", "merge", "{pf}", "{pf}", "--out", "merged.sqlite"], 1),
]


# ---------------------------------------------------------------- exported folders


def _exported(mutate):
    def setup(d, b):
        shutil.copytree(b / "q", d / "q", symlinks=True)
        mutate(d / "q", d)
        return {"q": "q"}
    return setup


def _edit_json(rel, fn):
    def mutate(q, d):
        p = q / rel
        data = json.loads(p.read_text())
        fn(data)
        p.write_text(json.dumps(data, indent=2))
    return mutate


def _swap_heads(cfg):
    cfg["num_attention_heads"], cfg["attention_head_dim"] = cfg["attention_head_dim"], cfg["num_attention_heads"]


def _manifest(fn):
    return _edit_json(MANIFEST, fn)


def _packed_outside(q, d):
    """The packed tensors file replaced by a symlink to a copy outside the folder."""
    p = q / "transformer" / "mpsearch-packed.safetensors"
    shutil.copy(p, d / "outside.safetensors")
    p.unlink()
    os.symlink(d / "outside.safetensors", p)


def _tensors_elsewhere(q, d):
    """tensors_file names an absolute path outside the folder (a copy of the real file, digest and all)."""
    shutil.copy(q / "transformer" / "mpsearch-packed.safetensors", d / "elsewhere.safetensors")
    _manifest(lambda m: m.update(tensors_file=str(d / "elsewhere.safetensors")))(q, d)


def _plan_above(q, d):
    """The manifest's plan is "../x.yaml": a copy of the real plan outside the folder (digest and all)."""
    shutil.copy(q / "transformer" / "mpsearch-plan.yaml", d / "x.yaml")
    _manifest(lambda m: m.update(plan="../x.yaml"))(q, d)


def _truncate_packed(q, d):
    p = q / "transformer" / "mpsearch-packed.safetensors"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 1000])


GEN_Q = ["generate", "--model", "{q}", *GEN, "--out", "imgs"]
INSPECT_Q = ["inspect", "--model", "{q}"]

EXPORT_CASES = [
    ("export-config-heads-swapped", _exported(_edit_json("transformer/config.json", _swap_heads)), GEN_Q, 1),
    ("export-config-heads-swapped-inspect", _exported(_edit_json("transformer/config.json", _swap_heads)),
     INSPECT_Q, 1),
    ("export-config-norm-eps", _exported(_edit_json("transformer/config.json", lambda c: c.update(norm_eps=0.5))),
     GEN_Q, 1),
    ("export-config-not-json", _exported(lambda q, d: (q / "transformer" / "config.json").write_text("{oops")),
     INSPECT_Q, 1),
    ("export-model-index-unet", _exported(_edit_json("model_index.json", lambda x: x.update(
        transformer=[None, None], unet=["diffusers", "UNet2DModel"]))), GEN_Q, 1),
    ("export-model-index-list", _exported(lambda q, d: (q / "model_index.json").write_text("[1, 2]")), INSPECT_Q, 1),
    ("export-scheduler-steps-negative", _exported(_edit_json("scheduler/scheduler_config.json",
                                                             lambda c: c.update(num_train_timesteps=-5))), GEN_Q, 1),
    ("export-scheduler-unknown-schedule", _exported(_edit_json("scheduler/scheduler_config.json",
                                                               lambda c: c.update(beta_schedule="no-such"))),
     GEN_Q, 1),
    ("export-manifest-missing", _exported(lambda q, d: (q / MANIFEST).unlink()), GEN_Q, 1),
    ("export-manifest-not-json", _exported(lambda q, d: (q / MANIFEST).write_text("not json at all")), INSPECT_Q, 1),
    ("export-manifest-a-list", _exported(lambda q, d: (q / MANIFEST).write_text("[]")), GEN_Q, 1),
    ("export-manifest-tensors-absolute", _exported(_tensors_elsewhere), GEN_Q, 1),
    ("export-manifest-plan-dotdot", _exported(_plan_above), GEN_Q, 1),
    ("export-manifest-layers-string", _exported(_manifest(lambda m: m.update(layers="all of them"))), GEN_Q, 1),
    ("export-manifest-tensor-record-string", _exported(_manifest(lambda m: m["tensors"].update(
        {next(iter(m["tensors"])): "int8"}))), GEN_Q, 1),
    ("export-manifest-bytes-negative", _exported(_manifest(lambda m: m.update(bytes=-1))), INSPECT_Q, 1),
    ("export-packed-truncated", _exported(_truncate_packed), GEN_Q, 1),
    ("export-packed-symlink-outside", _exported(_packed_outside), GEN_Q, 1),
]


# ---------------------------------------------------------------- prompt files


def _prompts(data):
    def setup(d, b):
        if data is None:
            return {"pr": "missing.txt"}
        if data == "dir":
            (d / "pdir").mkdir()
            return {"pr": "pdir"}
        return {"pr": _write(d, "prompts.txt", data)}
    return setup


PROMPT_PROFILE = ["profile", "--prompts", "{pr}", "--steps", "1", "--seeds", "0", "--out", "pf.sqlite"]
PROMPT_GEN = ["generate", "--prompts", "{pr}", "--steps", "1", "--out", "imgs"]
PROMPT_EVAL = ["eval", "--prompts", "{pr}", "--steps", "1", "--seeds", "1000"]

PROMPT_CASES = [
    ("prompts-missing", _prompts(None), PROMPT_GEN, 2),
    ("prompts-empty", _prompts(""), PROMPT_PROFILE, 2),
    ("prompts-directory", _prompts("dir"), PROMPT_EVAL, 2),
    ("prompts-binary", _prompts(bytes(range(128, 256)) * 4), PROMPT_PROFILE, 2),
    ("prompts-binary-generate", _prompts(b"\xff\xfe\x00a\x00 \x00c\x00a\x00t"), PROMPT_GEN, 2),
    ("prompts-blank-lines", _prompts("\n   \n\t\n\n"), PROMPT_EVAL, 2),
    ("prompts-for-a-class-model", _prompts("a red cube\n"), PROMPT_GEN, 2),
]


# ---------------------------------------------------------------- arguments

ARCH_SOLVE = ["solve", "--arch", "dit-xl", "--out", "p.yaml", "--budget"]


def _blocker(d, b):
    _write(d, "blocker", "a file where a folder should be\n")
    return {}


def _with_profile(extra=None):
    def setup(d, b):
        shutil.copy(b / "prof.sqlite", d / "pf.sqlite")
        if extra:
            extra(d, b)
        return {"pf": "pf.sqlite"}
    return setup


def _existing_dir(d, b):
    shutil.copy(b / "prof.sqlite", d / "pf.sqlite")
    (d / "already").mkdir()
    return {"pf": "pf.sqlite"}


NOWHERE = "/proc/mpsearch-no-such-folder/out"  # a parent that cannot be created, even by root

ARG_CASES = [
    # budgets (through `solve --arch`, which needs no profile; test_bad_input covers the profile path)
    ("budget-nanGB", None, [*ARCH_SOLVE, "nanGB"], 2),
    ("budget-minus-5-percent", None, [*ARCH_SOLVE, "-5%"], 2),
    ("budget-infGB", None, [*ARCH_SOLVE, "infGB"], 2),
    ("budget-1e400B", None, [*ARCH_SOLVE, "1e400B"], 2),
    ("budget-0B", None, [*ARCH_SOLVE, "0B"], 2),
    ("budget-abc", None, [*ARCH_SOLVE, "abc"], 2),
    ("budget-5XB", None, [*ARCH_SOLVE, "5XB"], 2),
    ("budget-nan-percent", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "nan%", "--out", "p.yaml"], 2),
    ("budget-infbits", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "infbits", "--out", "p.yaml"], 2),
    ("budget-sweep-nan", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "100KB:nanGB:10KB",
                                           "--out", "front"], 2),
    ("compute-budget-nan", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "60%", "--compute", "nan%",
                                             "--out", "p.yaml"], 2),
    ("pareto-zero", _with_profile(), ["solve", "--profile", "{pf}", "--pareto", "0", "--out", "front"], 2),
    ("pareto-negative", _with_profile(), ["solve", "--profile", "{pf}", "--pareto", "-2", "--out", "front"], 2),
    # seeds, steps, shards
    ("seeds-empty", None, ["profile", "--seeds", "", "--steps", "1", "--labels", "0", "--out", "pf.sqlite"], 2),
    ("seeds-negative", None, ["profile", "--seeds", "-1", "--steps", "1", "--labels", "0", "--out", "pf.sqlite"], 2),
    ("seeds-strings", None, ["eval", "--seeds", "a,b", "--labels", "0", "--steps", "1"], 2),
    ("steps-zero-report", _with_profile(), ["report", "--profile", "{pf}", "--steps", "0", "--labels", "0",
                                            "--points", "0", "--out", "rep"], 2),
    ("steps-minus-1-generate", None, ["generate", "--steps", "-1", "--labels", "0", "--out", "imgs"], 2),
    ("steps-minus-1-eval", None, ["eval", "--steps", "-1", "--labels", "0", "--seeds", "1000"], 2),
    ("search-steps-zero", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "60%", "--search", "optuna",
                                            "--trials", "2", "--search-steps", "0", "--out", "p.yaml"], 2),
    ("trials-zero", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "60%", "--search", "optuna",
                                      "--trials", "0", "--out", "p.yaml"], 2),
    ("shard-2-of-2", None, ["profile", "--shard", "2/2", "--steps", "1", "--seeds", "0", "--labels", "0",
                            "--out", "pf.sqlite"], 2),
    ("shard-0-of-0", None, ["profile", "--shard", "0/0", "--steps", "1", "--seeds", "0", "--labels", "0",
                            "--out", "pf.sqlite"], 2),
    ("shard-a-of-b", None, ["profile", "--shard", "a/b", "--out", "pf.sqlite"], 2),
    ("shard-negative", None, ["profile", "--shard", "-1/2", "--steps", "1", "--seeds", "0", "--labels", "0",
                              "--out", "pf.sqlite"], 2),
    ("shard-three-parts", None, ["profile", "--shard", "0/2/4", "--out", "pf.sqlite"], 2),
    # pins, cache, metric
    ("pins-bad-regex-bracket", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "60%", "--pins",
                                                 "[abc=int8", "--out", "p.yaml"], 2),
    ("pins-bad-regex-star", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "60%", "--pins", "*=fp",
                                              "--out", "p.yaml"], 2),
    ("full-computations-zero", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "100%",
                                                 "--full-computations", "0", "--out", "p.yaml"], 2),
    ("full-computations-minus-3", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "100%",
                                                    "--full-computations", "-3", "--out", "p.yaml"], 2),
    ("speedup-nan", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "100%", "--speedup", "nan",
                                      "--out", "p.yaml"], 2),
    ("warmup-negative", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "100%", "--full-computations",
                                          "2", "--warmup", "-1", "--out", "p.yaml"], 2),
    ("rounds-zero", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "100%", "--full-computations", "2",
                                      "--rounds", "0", "--out", "p.yaml"], 2),
    ("metric-unknown-report", _with_profile(), ["report", "--profile", "{pf}", "--metric", "psnr", "--no-images",
                                                "--points", "2", "--out", "rep"], 2),
    ("metric-unknown-pareto", _with_profile(), ["solve", "--profile", "{pf}", "--pareto", "3", "--metric", "lpips",
                                                "--out", "front"], 2),
    # --out
    ("out-parent-uncreatable-solve", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "60%",
                                                       "--out", NOWHERE + "/p.yaml"], 1),
    ("out-parent-uncreatable-export", lambda d, b: {"p": str(b / "plan.yaml")},
     ["export", "--plan", "{p}", "--out", NOWHERE], 1),
    ("out-is-a-file-export", lambda d, b: _blocker(d, b) | {"p": str(b / "plan.yaml")},
     ["export", "--plan", "{p}", "--out", "blocker"], 1),
    ("out-is-a-file-report", _with_profile(_blocker), ["report", "--profile", "{pf}", "--no-images", "--points", "2",
                                                       "--out", "blocker"], 1),
    ("out-is-a-file-pareto", _with_profile(_blocker), ["solve", "--profile", "{pf}", "--pareto", "3",
                                                       "--out", "blocker"], 1),
    ("out-is-a-directory-solve", _existing_dir, ["solve", "--profile", "{pf}", "--budget", "60%",
                                                 "--out", "already"], 1),
    ("out-under-a-file-merge", _with_profile(_blocker), ["profile", "merge", "{pf}", "--out", "blocker/m.sqlite"], 1),
]

FAMILIES = {"plans": PLAN_CASES, "profiles": PROFILE_CASES, "exported": EXPORT_CASES, "prompts": PROMPT_CASES,
            "arguments": ARG_CASES}
IN_PROCESS = [(fam, *row) for fam, rows in FAMILIES.items() for row in rows]


def _model_folders(argv, tmp_path) -> list[Path]:
    """The model folders a command reads (the embedded defaults, or a folder under tmp_path): to check they are
    untouched."""
    if argv[0] not in ("generate", "export", "eval", "inspect", "report", "profile", "solve"):
        return []
    model = argv[argv.index("--model") + 1] if "--model" in argv else "default"
    if model == "default":
        return [ASSETS / "default-dit"]
    if model == "default-unet":
        return [ASSETS / "default-unet"]
    return [tmp_path / model]


def _prepare(setup, argv, tmp_path, base):
    subs = setup(tmp_path, base) if setup else {}
    return [a.format(**subs) for a in argv]


def _check(got, code, err, out, argv, before, folders_before, tmp_path):
    assert got == code, f"exit code {got}, expected {code}: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"stderr is not one line: {err!r}"
    assert lines[0].startswith("mpsearch: error:"), err
    assert exception_names(err) == [], f"a Python exception reached the user: {err}"
    assert "--debug" not in err, f"an unexpected error (the catch-all): {err}"
    assert out == "", out
    assert snapshot(tmp_path) == before, "a file under the working folder was written or changed"
    for folder, snap in folders_before.items():
        assert snapshot(folder) == snap, f"the model folder {folder} changed"


@pytest.mark.parametrize("family,setup,argv,code", [(r[0], *r[2:]) for r in IN_PROCESS],
                         ids=[r[1] for r in IN_PROCESS])
def test_hostile(family, setup, argv, code, base, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _prepare(setup, argv, tmp_path, base)
    folders = {f: snapshot(f) for f in _model_folders(argv, tmp_path) if f.is_dir() and not f.is_relative_to(tmp_path)}
    before = snapshot(tmp_path)
    got, out, err = run(capsys, *argv, "--json")
    _check(got, code, err, out, argv, before, folders, tmp_path)


@pytest.mark.parametrize("setup,argv,code", [r[1:] for r in PLAN_PROCESS_CASES], ids=[r[0] for r in PLAN_PROCESS_CASES])
def test_hostile_process(setup, argv, code, base, tmp_path):
    """A real process, refused within 5 s of starting the command (after its imports), under a 6 GB memory cap."""
    argv = _prepare(setup, argv, tmp_path, base)
    before = snapshot(tmp_path)
    folders = {ASSETS / "default-dit": snapshot(ASSETS / "default-dit")}
    got, out, err = run_process(*argv, "--json", cwd=tmp_path, deadline=5, memory=6 << 30)
    assert got != -14, f"still running 5 s after the command started: {err}"
    _check(got, code, err, out, argv, before, folders, tmp_path)


def test_partial_profile_solves_with_allow_partial(base, capsys, tmp_path):
    """The partial profile refused above solves when asked for explicitly (the flag the refusal names)."""
    code, _, err = run(capsys, "solve", "--profile", base / "partial.sqlite", "--budget", "60%", "--allow-partial",
                         "--out", tmp_path / "p.yaml", "--json")
    assert code == 0, err
    Plan.load(tmp_path / "p.yaml")


def test_partial_profile_refusal_names_the_flag(base, capsys, tmp_path):
    code, _, err = run(capsys, "solve", "--profile", base / "partial.sqlite", "--budget", "60%",
                       "--out", tmp_path / "p.yaml")
    assert code in (1, 2) and "--allow-partial" in err and "merge" in err, err
    assert not (tmp_path / "p.yaml").exists()


def test_case_counts():
    """At least 60 hostile rows, and no name used twice (the ids select single rows)."""
    names = [r[1] for r in IN_PROCESS] + [r[0] for r in PLAN_PROCESS_CASES]
    assert len(names) >= 60 and len(names) == len(set(names))


# the commands of the tables with valid inputs: a row is refused for its own input, not for the rest of its command
CONTROLS = [
    ("generate-plan", lambda d, b: {"p": str(b / "plan.yaml")}, PLAN_GEN),
    ("export-plan", lambda d, b: {"p": str(b / "plan.yaml")}, PLAN_EXPORT),
    ("eval-plan", lambda d, b: {"p": str(b / "plan.yaml")}, PLAN_EVAL),
    ("solve-profile", _with_profile(), SOLVE),
    ("generate-exported", _exported(lambda q, d: None), GEN_Q),
    ("inspect-exported", _exported(lambda q, d: None), INSPECT_Q),
    ("solve-arch", None, [*ARCH_SOLVE, "60%"]),
    ("solve-cache", _with_profile(), ["solve", "--profile", "{pf}", "--budget", "100%", "--full-computations", "2",
                                      "--warmup", "1", "--out", "p.yaml"]),
]


@pytest.mark.parametrize("setup,argv", [c[1:] for c in CONTROLS], ids=[c[0] for c in CONTROLS])
def test_table_commands_accept_valid_input(setup, argv, base, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *_prepare(setup, argv, tmp_path, base), "--json")
    assert code == 0, err
    json.loads(out)
