"""`mpsearch inspect --model DIR` builds the denoiser on the meta device from its config: no weights are read,
and it shows what loading the whole pipeline showed (cache-unit shares aside: they now count attention)."""

import json

import pytest

from mpsearch.apps.cli import main
from mpsearch.apps.pipeline import load_meta_denoiser, load_pipeline
from mpsearch.apps.testing import build_tiny_pipeline
from mpsearch.models import describe
from mpsearch.plan import Plan
from mpsearch.runtime.checkpoint import export


def inspect_json(capsys, model) -> dict:
    code = main(["inspect", "--model", str(model), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def without_shares(data: dict) -> dict:
    data = dict(data)
    data["cache_units"] = [{k: v for k, v in u.items() if k != "share"} for u in data["cache_units"]]
    return data


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "sd15"
    build_tiny_pipeline("sd15").save_pretrained(path, safe_serialization=True)
    return path


def _forbid_weight_loading(monkeypatch):
    import diffusers
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("inspect read weights")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)
    monkeypatch.setattr(diffusers.ModelMixin, "from_pretrained", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)


@pytest.mark.parametrize("model", ["folder", "default-unet"])
def test_inspect_reads_no_weights_and_shows_the_same(model, sd15_dir, capsys, monkeypatch):
    model = sd15_dir if model == "folder" else model
    loaded = describe(load_pipeline(model))  # what inspect described before: the loaded pipeline's denoiser
    _forbid_weight_loading(monkeypatch)
    data = inspect_json(capsys, model)
    assert data["fingerprint"] == loaded.fingerprint and data["class"] == loaded.denoiser_class
    assert data["layers"] == [l.to_dict() | {"numel": l.numel} for l in loaded.layers]
    assert (data["fixed_bytes"], data["fp_bytes"]) == (loaded.fixed_bytes, loaded.fp_bytes)
    assert (data["min_bytes"], data["max_bytes"]) == loaded.size_range()
    assert data["tie_groups"] == [list(g) for g in loaded.tie_groups]
    assert data["cacheable_blocks"] == list(loaded.blocks)
    assert data["cache_units"] and all(0 < u["share"] < 1 for u in data["cache_units"])


def test_meta_denoiser_has_no_storage(sd15_dir):
    model = load_meta_denoiser(sd15_dir)
    assert all(p.is_meta for p in model.parameters())


def test_inspect_of_an_exported_folder_describes_its_source(sd15_dir, capsys, tmp_path, monkeypatch):
    pipe = load_pipeline(sd15_dir)
    plan = Plan.uniform(pipe, "int8")
    export(pipe, plan, tmp_path / "exp")
    source = inspect_json(capsys, sd15_dir)
    _forbid_weight_loading(monkeypatch)
    exported = inspect_json(capsys, tmp_path / "exp")
    # before: the already-quantized model, under a fingerprint no plan of this model carries
    assert exported["fingerprint"] == plan.fingerprint == source["fingerprint"]
    assert without_shares(exported) | {"model": None} == without_shares(source) | {"model": None}


def test_inspect_of_a_weights_file_shorter_than_its_header_says(sd15_dir, capsys, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(sd15_dir, bad)
    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    code = main(["inspect", "--model", str(bad)])
    err = capsys.readouterr().err
    assert code == 1 and "cannot load" in err and str(bad) in err and err.count("\n") == 1
