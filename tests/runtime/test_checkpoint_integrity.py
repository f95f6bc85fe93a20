"""An exported folder is exactly what export wrote, or a one-line error: every file the loader reads has a
digest, every path stays inside the folder, the manifest is checked whole, staging folders of dead exports
are cleaned up, and everything written gets the user's umask."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mpsearch.apps.cli import main
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.io import atomic_write_bytes, staging_folder
from mpsearch.plan import Plan
from mpsearch.runtime import checkpoint
from mpsearch.runtime.checkpoint import MANIFEST, CheckpointError, export

TENSORS = "transformer/" + checkpoint.TENSORS
PLAN = "transformer/" + checkpoint.PLAN


def assert_one_line(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pipe = load_pipeline("default")
    return export(pipe, Plan.uniform(pipe, "int8"), tmp_path_factory.mktemp("exported") / "q")


@pytest.fixture
def copy(exported, tmp_path):
    return Path(shutil.copytree(exported, tmp_path / "copy", symlinks=True))


def _manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def _edit_manifest(folder, **changes):
    (folder / MANIFEST).write_text(json.dumps(_manifest(folder) | changes))


def _edit_json(path, **changes):
    path.write_text(json.dumps(json.loads(path.read_text()) | changes, indent=2))


# ---- 1. every file the loader reads has a digest


@pytest.mark.parametrize("name,changes", [
    ("transformer/config.json", {"num_attention_heads": 2, "attention_head_dim": 64}),  # same product
    ("transformer/config.json", {"norm_eps": 1e-3}),
    ("scheduler/scheduler_config.json", {"beta_end": 0.03}),
    ("model_index.json", {"_diffusers_version": "0.0.1"}),
], ids=["heads", "norm_eps", "scheduler", "model_index"])
def test_an_altered_config_is_a_one_line_error_naming_the_file(copy, name, changes):
    _edit_json(copy / name, **changes)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, name.split("/")[-1], "re-export")


def test_an_altered_config_exits_1_on_the_command_line(copy, capsys):
    _edit_json(copy / "transformer" / "config.json", norm_eps=1e-3)
    assert main(["generate", "--model", str(copy), "--labels", "1", "--steps", "1", "--out", str(copy / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and not (copy / "x").exists()


def test_the_manifest_lists_every_file_of_the_folder(exported):
    files = _manifest(exported)["files"]
    on_disk = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(files) == on_disk and {"model_index.json", "scheduler/scheduler_config.json", TENSORS, PLAN,
                                      "transformer/config.json"} <= on_disk
    assert all(rec["digest"].startswith("blake3:") for rec in files.values())


def test_an_older_format_version_is_one_clear_error(copy):
    _edit_manifest(copy, format_version=1)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "version 1", "re-export")


def test_a_swapped_file_from_another_export_is_an_error(exported, copy, tmp_path):
    from diffusers import DDIMScheduler

    pipe = load_pipeline("default")
    pipe.register_modules(scheduler=DDIMScheduler.from_config(pipe.scheduler.config, beta_end=0.03))
    other = export(pipe, Plan.uniform(pipe, "int8"), tmp_path / "other")
    load_pipeline(other)  # a good folder of its own
    shutil.copy(other / "scheduler" / "scheduler_config.json", copy / "scheduler" / "scheduler_config.json")
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "scheduler_config.json", "digest")


def test_a_file_the_manifest_does_not_list_is_an_error(copy):
    (copy / "scheduler" / "extra.json").write_text("{}")
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "extra.json", "remove it")


# ---- 2. paths stay inside the folder; the manifest is checked whole


def test_an_absolute_tensors_file_elsewhere_is_an_error(copy, tmp_path):
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.copy(copy / TENSORS, elsewhere)  # same bytes: the digest matches
    manifest = _manifest(copy)
    changes = {"tensors_file": str(elsewhere)}
    if "files" in manifest:
        changes["files"] = manifest["files"] | {str(elsewhere): manifest["files"][TENSORS]}
    _edit_manifest(copy, **changes)
    (copy / TENSORS).unlink()
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "tensors_file", "relative")


def test_a_plan_outside_the_folder_is_an_error(copy, tmp_path):
    (tmp_path / "other").mkdir()
    shutil.copy(copy / PLAN, tmp_path / "other" / "plan.yaml")
    manifest = _manifest(copy)
    changes = {"plan": "../other/plan.yaml"}
    if "files" in manifest:
        changes["files"] = manifest["files"] | {"../other/plan.yaml": manifest["files"][PLAN]}
    _edit_manifest(copy, **changes)
    (copy / PLAN).unlink()
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "../other/plan.yaml", "re-export")


@pytest.mark.parametrize("name", [TENSORS, "scheduler", MANIFEST], ids=["tensors", "component", "manifest"])
def test_a_symlink_out_of_the_folder_is_an_error(copy, tmp_path, name):
    target = tmp_path / "outside" / name
    target.parent.mkdir(parents=True)
    shutil.move(copy / name, target)  # the very same bytes, only elsewhere
    os.symlink(target, copy / name)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "outside", "re-export")


@pytest.mark.parametrize("edit", [
    lambda m: {"layers": m["layers"] | {next(iter(m["layers"])): "int8"}},  # a string where a mapping is expected
    lambda m: {"layers": {k: {kk: vv for kk, vv in v.items() if kk != "format"} for k, v in m["layers"].items()}},
    lambda m: {"layers": {k: v | {"shape": "128x4"} for k, v in m["layers"].items()}},
    lambda m: {"tensors": m["tensors"] | {next(iter(m["tensors"])): "float32"}},
    lambda m: {"tensors": {k: v | {"dtype": ["float32"]} for k, v in m["tensors"].items()}},
    lambda m: {"aliases": {"x.weight": 5}},
    lambda m: {"bytes": "1538080"},  # this one and the two below were one-line errors before too
    lambda m: {"component": ["transformer"]},
    lambda m: {"layers": ["pos_embed.proj"]},
], ids=["layer-str", "layer-no-format", "layer-shape", "tensor-str", "tensor-dtype-list", "alias-int", "bytes-str", "component-list",
        "layers-list"])
def test_a_damaged_manifest_entry_is_a_one_line_error(copy, edit, capsys):
    _edit_manifest(copy, **edit(_manifest(copy)))
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, MANIFEST, "re-export")


def test_a_forged_plan_and_manifest_naming_a_layer_the_model_lacks_is_a_one_line_error(copy):
    import yaml

    from mpsearch.runtime.tensorfile import blake3_file

    plan_file = copy / PLAN
    data = yaml.safe_load(plan_file.read_text())
    first = next(iter(data["layers"]))
    data["layers"] = {"nope": data["layers"][first], **data["layers"]}
    plan_file.write_text(yaml.safe_dump(data, sort_keys=False))
    manifest = _manifest(copy)  # digests forged to match, and "nope" packed with the first layer's tensors
    layers = {"nope": manifest["layers"][first], **manifest["layers"]}
    files = manifest["files"] | {PLAN: {"bytes": plan_file.stat().st_size, "digest": blake3_file(plan_file)}}
    _edit_manifest(copy, layers=layers, files=files)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "nope", "re-export")


# ---- 3. staging folders of dead exports are removed


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    host = socket.gethostname()
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f".q.staging-{dead}@{host}.abc_12.tmp", tmp_path / f".other.staging-{dead}@{host}.x1.old"]
    kept = [tmp_path / f".q.staging-{live}@{host}.abc_12.tmp",  # its owner still runs
            tmp_path / f".q.staging-{dead}@another-machine.abc_12.tmp",  # cannot tell: another machine's
            tmp_path / ".q.notes.tmp"]  # not a staging folder
    for folder in stale + kept:
        folder.mkdir()
        (folder / "model_index.json").write_text("{}")
    seen = []
    real = checkpoint.staging_folder

    def spy(out, *a, **k):
        seen.append(real(out, *a, **k))
        return seen[-1]

    monkeypatch.setattr(checkpoint, "staging_folder", spy)
    pipe = load_pipeline("default")
    export(pipe, Plan.uniform(pipe, "int8"), tmp_path / "q")
    assert [p.exists() for p in stale] == [False, False]
    assert all((p / "model_index.json").exists() for p in kept)
    assert seen and f".q.staging-{os.getpid()}@" in seen[0].name  # the export's own carries its pid
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["q"] + [p.name for p in kept])


# ---- 4. what mpsearch writes gets the user's umask


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_exported_folders_plans_and_files_get_the_umask(umask, tmp_path):
    pipe = load_pipeline("default")
    plan = Plan.uniform(pipe, "int8")
    out = export(pipe, plan, tmp_path / "q")
    for p in [out, *out.rglob("*")]:
        assert _mode(p) == (0o777 if p.is_dir() else 0o666) & ~umask, p
    assert _mode(plan.save(tmp_path / "plan.yaml")) == 0o666 & ~umask
    assert _mode(atomic_write_bytes(tmp_path / "x.bin", b"x")) == 0o666 & ~umask
    assert _mode(staging_folder(tmp_path / "site")) == 0o777 & ~umask


def test_merged_profiles_get_the_umask(umask, dit_pipe, tmp_path):
    from mpsearch.apps.profile import profile
    from mpsearch.profiling.store import merge_profiles

    shards = [tmp_path / f"s{i}.sqlite" for i in range(2)]
    for i, s in enumerate(shards):
        profile(dit_pipe, out=s, steps=1, seeds=(0, 1), labels=(1,), shard=(i, 2), progress=False)
    merged = merge_profiles(shards, tmp_path / "m.sqlite")
    assert _mode(merged.path) == 0o666 & ~umask


# ---- 5. a file replaced by a folder, or truncated, is a one-line error naming it (the packed tensors and a
# component config replaced by a folder were one-line errors before too: kept so they stay so)


@pytest.mark.parametrize("name", [TENSORS, "model_index.json", MANIFEST, "scheduler/scheduler_config.json"])
def test_a_file_replaced_by_a_folder_is_a_one_line_error(copy, name):
    (copy / name).unlink()
    (copy / name).mkdir()
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "folder", "re-export")


def test_a_truncated_component_config_is_a_one_line_error(copy):
    f = copy / "scheduler" / "scheduler_config.json"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "scheduler_config.json", "truncated or replaced")


def test_a_tensor_file_replaced_by_a_folder_with_a_forged_size_is_a_one_line_error(copy):
    (copy / TENSORS).unlink()
    (copy / TENSORS).mkdir()
    with pytest.raises(CheckpointError) as e:
        checkpoint.read_tensors(copy / TENSORS, file_bytes=(copy / TENSORS).stat().st_size, digest="blake3:00",
                                error=CheckpointError, fix="re-export")
    assert_one_line(e, "folder")
