"""Quantized checkpoints: `export` writes a plan's packed denoiser, `load_pipeline` builds it back without ever
allocating a full-precision weight, and its images are bit-identical to `apply_plan` on the fp model."""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mpsearch
from mpsearch.apps.cli import main
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.cache_units import get_unit
from mpsearch.errors import PlanError
from mpsearch.models import describe, get_denoiser, measured_bytes
from mpsearch.plan import Plan
from mpsearch.runtime import checkpoint
from mpsearch.runtime.checkpoint import MANIFEST, CheckpointError, export, load_denoiser
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate
from mpsearch.runtime.tensorfile import blake3_file


def mixed_plan(pipe, formats=("int8", "nvfp4", "int4", "fp")) -> Plan:
    """Every format in turn over the layers (where eligible): all packings in one checkpoint."""
    info = describe(pipe)
    assignment = {}
    for i, layer in enumerate(info.layers):
        fmt = formats[i % len(formats)]
        assignment[layer.name] = fmt if fmt in layer.eligible else "fp"
    return Plan.from_assignment(info, assignment, provenance={"solver": "test"},
                                weights=mpsearch.models.weights_digest(pipe, info.names))


def reference(pipe, plan, conditions, steps, size=None):
    handle = apply_plan(pipe, plan)
    try:
        return generate(pipe, conditions, 0, steps, size=size)
    finally:
        handle.remove()


def assert_one_line(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


# ---- round trips, bit for bit


@pytest.mark.parametrize("model", ["default", "default-unet"])
def test_round_trip_on_the_defaults_is_bit_identical(model, tmp_path):
    pipe = load_pipeline(model)
    before = {k: v.clone() for k, v in get_denoiser(pipe).state_dict().items()}
    plan = mixed_plan(pipe)
    assert {"int8", "nvfp4", "int4", "fp"} <= set(plan.layers.values())
    out = export(pipe, plan, tmp_path / "q")
    # the pipeline is left as it was: full precision, no plan applied
    after = get_denoiser(pipe).state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    ref = reference(pipe, plan, [1, 7], 2)
    q = mpsearch.load_pipeline(out)
    assert type(q) is type(pipe) and measured_bytes(q) == plan.predicted_bytes
    assert np.array_equal(generate(q, [1, 7], 0, 2), ref)
    # the folder holds safetensors and JSON/YAML only: nothing pickled
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".yaml"}


def test_plan_with_activation_windows_and_cache_round_trips(tmp_path):
    pipe = load_pipeline("default-unet")
    den = get_denoiser(pipe)
    info = describe(pipe)
    int8 = [l.name for l in info.layers if "int8" in l.eligible][:3]
    base = Plan.uniform(pipe, "int8")
    unit = get_unit(den)
    plan = Plan.from_dict(base.to_dict() | {
        "overrides": [{"steps": [0, 2], "activations": {n: "fp" for n in int8}}],
        "cache": {"method": "uniform", "unit": unit.to_dict(), "compute": [True, False, True], "warmup": 1}})
    ref = reference(pipe, plan, [3], 3)
    q = load_pipeline(export(pipe, plan, tmp_path / "q"))
    assert np.array_equal(generate(q, [3], 0, 3), ref)
    # the windows and the cache matter: without them the images differ
    plain = reference(pipe, base, [3], 3)
    assert not np.array_equal(plain, ref)


pytest.importorskip("transformers")
from mpsearch.apps.testing import TINY_BUILDERS, save_tiny_pipeline  # noqa: E402

SLOW = {"sd15", "sdxl"}  # the UNets take a few seconds per step on two CPU cores


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {name: save_tiny_pipeline(name, root / name) for name in TINY_BUILDERS}


@pytest.mark.parametrize("arch", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TINY_BUILDERS])
def test_round_trip_on_the_tiny_architectures_is_bit_identical(arch, tiny_dirs, tmp_path):
    pipe = load_pipeline(tiny_dirs[arch])
    plan = mixed_plan(pipe)
    cond, size = ([1], None) if arch == "dit" else (["a red cube"], 16)
    out = export(pipe, plan, tmp_path / "q")
    ref = reference(pipe, plan, cond, 2, size)
    del pipe
    q = load_pipeline(out)
    assert measured_bytes(q) == plan.predicted_bytes
    assert np.array_equal(generate(q, cond, 0, 2, size=size), ref)


# ---- no full-precision weight, ever


class _Allocations(TorchDispatchMode):
    """Every storage (not on meta) that any torch op creates while active: (dtype, shape, bytes)."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                s = t.untyped_storage()
                self.seen.setdefault(s.data_ptr(), (t.dtype, tuple(t.shape), s.nbytes()))
        return out


@pytest.mark.parametrize("model", ["default", "default-unet"])
def test_load_allocates_only_the_plans_bytes(model, tmp_path):
    pipe = load_pipeline(model)
    plan = mixed_plan(pipe, ("int8", "nvfp4", "int4"))
    out = export(pipe, plan, tmp_path / "q")
    info = describe(pipe)
    del pipe
    with _Allocations() as allocs:
        den, loaded_plan = load_denoiser(out)
    assert loaded_plan.to_dict() == plan.to_dict()
    # a float tensor shaped like a quantized layer's weight is allowed only as often as layers of that shape
    # stay in fp (their weights are loaded as they are)
    quantized = {info.layer(n).shape for n, f in plan.layers.items() if f != "fp"}
    kept = Counter(info.layer(n).shape for n, f in plan.layers.items() if f == "fp")
    floats = Counter(a[1] for a in allocs.seen.values() if a[0].is_floating_point and a[1] in quantized)
    assert all(n <= kept[shape] for shape, n in floats.items()), "a quantized layer's fp weight was allocated"
    allocated = sum(a[2] for a in allocs.seen.values())
    assert plan.predicted_bytes <= allocated <= plan.predicted_bytes + 64 * 1024
    # every tensor is a packed one or one the plan keeps as it is; together exactly the plan's bytes
    manifest = json.loads((out / MANIFEST).read_text())
    modules = dict(den.named_modules())
    packed = {id(t) for n in manifest["layers"] for t in modules[n].packed().tensors.values()}
    for name, t in list(den.named_parameters()) + list(den.named_buffers()):
        assert id(t) in packed or name in manifest["tensors"], name
        assert not t.is_meta
    assert measured_bytes(den) == plan.predicted_bytes == manifest["bytes"]


# ---- bad folders, one-line errors


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pipe = load_pipeline("default")
    plan = Plan.uniform(pipe, "int8")
    return export(pipe, plan, tmp_path_factory.mktemp("exported") / "q"), plan


@pytest.fixture
def copy(exported, tmp_path):
    import shutil

    return Path(shutil.copytree(exported[0], tmp_path / "copy"))


def _tensor_file(folder):
    return folder / "transformer" / checkpoint.TENSORS


def _edit_manifest(folder, **changes):
    path = folder / MANIFEST
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _edit_file_record(folder, name, **changes):
    """Change the manifest's size/digest record of one file (forging it, as a tamperer would)."""
    files = json.loads((folder / MANIFEST).read_text())["files"]
    _edit_manifest(folder, files=files | {name: files[name] | changes})


def test_truncated_tensor_file_is_a_one_line_error(copy, capsys):
    f = _tensor_file(copy)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "truncated", "mpsearch export")
    # and the manifest cannot hide it: a size that agrees still meets the end of the data
    _edit_file_record(copy, "transformer/" + checkpoint.TENSORS, bytes=len(data) - 100)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "truncated")
    assert main(["generate", "--model", str(copy), "--labels", "1", "--steps", "1", "--out", str(copy / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err


def test_missing_tensor_file_is_a_one_line_error(copy):
    _tensor_file(copy).unlink()
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "missing")


def test_changed_bytes_or_digest_are_one_line_errors(copy):
    f = _tensor_file(copy)
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "digest")
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    load_pipeline(copy)  # restored: loads again
    _edit_file_record(copy, "transformer/" + checkpoint.TENSORS, digest="blake3:" + "0" * 64)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "digest")


def test_tampered_manifest_is_a_one_line_error(copy):
    manifest = json.loads((copy / MANIFEST).read_text())
    name = next(iter(manifest["tensors"]))
    tensors = manifest["tensors"] | {name: manifest["tensors"][name] | {"shape": [1, 2, 3]}}
    _edit_manifest(copy, tensors=tensors)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, name)
    _edit_manifest(copy, format_version=99)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "version 99", "upgrade mpsearch")
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError) as e:
        load_pipeline(copy)
    assert_one_line(e, "mpsearch export")


def test_a_plan_for_another_model_is_a_one_line_error(copy):
    other = Plan.uniform(load_pipeline("default-unet"), "int8")
    plan_file = copy / "transformer" / checkpoint.PLAN
    other.save(plan_file)
    with pytest.raises(CheckpointError) as e:  # the plan's digest no longer matches
        load_pipeline(copy)
    assert_one_line(e, "digest", "plan")
    _edit_file_record(copy, "transformer/" + checkpoint.PLAN, digest=blake3_file(plan_file),
                      bytes=plan_file.stat().st_size)
    with pytest.raises(CheckpointError) as e:  # digest forged too: the fingerprint still tells
        load_pipeline(copy)
    assert_one_line(e, "fingerprint")


def test_export_refuses_a_wrong_plan_and_leaves_nothing(tmp_path):
    pipe = load_pipeline("default")
    other = Plan.uniform(load_pipeline("default-unet"), "int8")
    with pytest.raises(PlanError):
        export(pipe, other, tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


def test_export_failure_leaves_no_partial_folder(tmp_path, monkeypatch):
    import safetensors.torch

    pipe = load_pipeline("default")
    plan = Plan.uniform(pipe, "nvfp4")

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(CheckpointError) as e:
        export(pipe, plan, tmp_path / "q")
    assert_one_line(e, "No space left")
    assert list(tmp_path.iterdir()) == []
    assert get_denoiser(pipe).__dict__.get("_mpsearch_plan_handle") is None  # the pipeline is not left planned


def test_export_replaces_a_checkpoint_but_not_another_folder(exported, tmp_path):
    pipe = load_pipeline("default")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError) as e:
        export(pipe, exported[1], tmp_path / "other")
    assert_one_line(e, "not an mpsearch checkpoint")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    export(pipe, exported[1], tmp_path / "q")
    plan = Plan.uniform(pipe, "int4")
    export(pipe, plan, tmp_path / "q")
    assert measured_bytes(load_pipeline(tmp_path / "q")) == plan.predicted_bytes
    assert sorted(os.listdir(tmp_path)) == ["other", "q"]


# ---- the command line


def test_cli_export_then_generate_matches_generate_with_the_plan(tmp_path, capsys):
    pipe = load_pipeline("default-unet")
    plan = mixed_plan(pipe)
    plan.save(tmp_path / "plan.yaml")
    code = main(["export", "--model", "default-unet", "--plan", str(tmp_path / "plan.yaml"),
                 "--out", str(tmp_path / "q"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["denoiser_bytes"] == plan.predicted_bytes and Path(data["out"]) == tmp_path / "q"
    args = ["--labels", "1,2", "--steps", "2", "--json"]
    assert main(["generate", "--model", str(tmp_path / "q"), "--out", str(tmp_path / "a"), *args]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["generate", "--model", "default-unet", "--plan", str(tmp_path / "plan.yaml"),
                 "--out", str(tmp_path / "b"), *args]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a["denoiser_bytes"] == b["denoiser_bytes"] == plan.predicted_bytes
    for x, y in zip(a["images"], b["images"]):
        assert Path(x).read_bytes() == Path(y).read_bytes()
    # and a bad plan path is one line, exit 1, nothing written
    assert main(["export", "--model", "default", "--plan", str(tmp_path / "nope.yaml"), "--out",
                 str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_out_of_memory_loading_the_other_components_is_not_blamed_on_the_folder(copy, monkeypatch):
    from mpsearch.apps.pipeline import DigitsPipeline

    def full(cls, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(DigitsPipeline, "from_pretrained", classmethod(full))
    with pytest.raises(torch.OutOfMemoryError):
        checkpoint.load_quantized(copy, pipeline_class=DigitsPipeline)
