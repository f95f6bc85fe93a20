"""The whole flow (profile -> solve -> generate, apply/remove) on tiny versions of the six denoiser classes,
each saved as a local diffusers pipeline folder with its text encoders and tokenizers (built offline)."""

import json

import numpy as np
import pytest
import torch

from mpsearch.apps.cli import main

pytest.importorskip("transformers")

from mpsearch.apps.testing import TINY_BUILDERS, save_tiny_pipeline  # noqa: E402

TEXT = [n for n in TINY_BUILDERS if n != "dit"]
SLOW = {"sd15", "sdxl"}  # the UNets take a few seconds per step on two CPU cores


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Every tiny pipeline, saved once per session with save_pretrained (safetensors)."""
    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {name: save_tiny_pipeline(name, root / name) for name in TINY_BUILDERS}


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("arch", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TINY_BUILDERS])
def test_profile_solve_generate(arch, tiny_dirs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = str(tiny_dirs[arch])
    if arch == "dit":
        cond = ["--labels", "1,2"]
        size = []
    else:
        (tmp_path / "prompts.txt").write_text("# one prompt per line\na red cube\n\nan astronaut on a horse\n"
                                              if arch not in SLOW else "a red cube\n")
        cond = ["--prompts", "prompts.txt"]
        size = ["--size", "16"]
    guidance = ["--guidance", "3.5" if arch == "flux" else "2.0"]
    prof = run_json(capsys, "profile", "--model", model, *cond, *size, *guidance, "--steps", "2", "--seeds", "0",
                    "--out", "prof.sqlite")
    assert prof["units_done"] == 1 and prof["steps"] == 2
    info = run_json(capsys, "inspect", "--model", model)
    assert prof["class"] == info["class"]
    sol = run_json(capsys, "solve", "--profile", "prof.sqlite", "--budget", "80%", "--tie", "--out", "plan.yaml")
    assert sol["bytes"] <= 0.8 * info["fp_bytes"] and sol["status"] == "optimal"
    from mpsearch.plan import Plan

    plan = Plan.load("plan.yaml")
    layers = {l["name"]: l for l in info["layers"]}
    for name, fmt in plan.layers.items():  # the default pins hold
        role = layers[name]["role"]
        if role in ("time_embed", "cond_embed", "in_proj", "out_proj"):
            assert fmt == "fp", (name, fmt)
        elif role == "modulation":
            assert fmt == "int8", (name, fmt)
    for group in info["tie_groups"]:
        assert len({plan.layers[n] for n in group}) == 1
    gen = run_json(capsys, "generate", "--model", model, "--plan", "plan.yaml", *cond, *size, "--steps", "2",
                   "--out", "imgs")
    assert gen["denoiser_bytes"] == sol["bytes"] and len(gen["images"]) == (2 if arch not in SLOW else 1)
    assert (tmp_path / gen["images"][0]).read_bytes()[:4] == b"\x89PNG"


def test_apply_and_remove_bit_for_bit_on_flux(tiny_dirs):
    from mpsearch import apply_plan
    from mpsearch.apps.pipeline import load_pipeline
    from mpsearch.models import describe
    from mpsearch.plan import Plan
    from mpsearch.runtime.generation import generate

    pipe = load_pipeline(tiny_dirs["flux"])
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    ref = generate(pipe, ["a red cube"], 0, 2, size=16)
    handle = apply_plan(pipe, Plan.uniform(describe(pipe), "nvfp4"))
    out = generate(pipe, ["a red cube"], 0, 2, size=16)
    handle.remove()
    assert out.shape == ref.shape == (1, 16, 16, 3) and not np.array_equal(out, ref)
    after = pipe.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert np.array_equal(generate(pipe, ["a red cube"], 0, 2, size=16), ref)


@pytest.mark.parametrize("guidance,batch", [(1.0, 2), (2.0, 4)])
def test_classifier_free_guidance_reaches_the_denoiser(tiny_dirs, guidance, batch):
    """With guidance > 1 the denoiser sees one batch [uncond, cond]: the profiler's hooks measure both halves."""
    from mpsearch.apps.pipeline import load_pipeline
    from mpsearch.runtime.generation import generate

    pipe = load_pipeline(tiny_dirs["pixart-sigma"])
    seen = []
    h = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).shape[0]),
                                                   with_kwargs=True)
    try:
        generate(pipe, ["a red cube", "a blue ball"], 0, 2, guidance_scale=guidance, size=16)
    finally:
        h.remove()
    assert seen == [batch, batch]


def test_wrong_conditions_name_the_option(tiny_dirs, capsys, tmp_path):
    code = main(["profile", "--model", str(tiny_dirs["pixart-sigma"]), "--labels", "1", "--steps", "1",
                 "--out", str(tmp_path / "p.sqlite")])
    assert code == 2 and "--prompts" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    code = main(["profile", "--model", str(tiny_dirs["pixart-sigma"]), "--prompts", str(tmp_path / "empty.txt")])
    assert code == 2 and "no prompts" in capsys.readouterr().err
