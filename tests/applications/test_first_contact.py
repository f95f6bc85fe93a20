"""A user's first contact, from the CLI, on a small stand-in shaped like SD1.5 (a tiny UNet2DConditionModel text-to-
image pipeline saved to a folder): inspect, profile with no options, solve, export, and generate from the export
and from the plan applied to the folder, with the same seed: the exported model's images are apply_plan's, bit
for bit. The same at real size, as separate processes with times and peak memory: scripts/bench_first_contact.py.
"""

import json
import time

import numpy as np
import pytest
from PIL import Image

from mpsearch.apps.cli import main
from mpsearch.apps.testing import build_tiny_pipeline


def run_json(capsys, *argv) -> dict:
    code = main([*map(str, argv), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, f"mpsearch {' '.join(map(str, argv))}: {err}"
    return json.loads(out)


def pixels(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in paths]


@pytest.mark.slow
def test_first_contact_from_the_cli(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "sd15"
    build_tiny_pipeline("sd15").save_pretrained(model, safe_serialization=True)
    t0 = time.perf_counter()
    info = run_json(capsys, "inspect", "--model", model)
    assert info["class"] == "UNet2DConditionModel" and info["cache_units"]
    prof = run_json(capsys, "profile", "--model", model, "--out", "prof.sqlite")  # no other options: the defaults
    assert prof["class"] == info["class"] and prof["units_done"] == prof["units_total"] >= 1
    budget = (info["uniform_bytes"]["int8"] + info["fp_bytes"]) // 2  # fits with the default role pins
    sol = run_json(capsys, "solve", "--profile", "prof.sqlite", "--budget", f"{budget}B", "--out", "plan.yaml")
    assert sol["status"] == "optimal" and sol["bytes"] <= budget and sum(n for f, n in sol["formats"].items() if f.partition(":")[0] == "int8") > 0
    exp = run_json(capsys, "export", "--model", model, "--plan", "plan.yaml", "--out", "exp")
    assert exp["denoiser_bytes"] == sol["bytes"]
    assert run_json(capsys, "inspect", "--model", "exp")["fingerprint"] == info["fingerprint"]
    common = ("--seed", "3", "--steps", "3")
    plain = run_json(capsys, "generate", "--model", model, *common, "--out", "plain")
    # warm-up: a process's first 4-bit layers on the CPU (numba's kernels, compiled on first use) round in the
    # last bit unlike every later call, so the first planned generation of a process is not quite the next one's
    # (MPSEARCH_KERNELS=jit=off: equal); as separate processes (scripts/bench_first_contact.py) both are first
    run_json(capsys, "generate", "--model", "exp", "--seed", "3", "--steps", "1", "--out", "warmup")
    from_export = run_json(capsys, "generate", "--model", "exp", *common, "--out", "from_export")
    applied = run_json(capsys, "generate", "--model", model, "--plan", "plan.yaml", *common, "--out", "applied")
    assert from_export["denoiser_bytes"] == applied["denoiser_bytes"] == sol["bytes"] < plain["denoiser_bytes"]
    assert len(from_export["images"]) == len(applied["images"]) >= 1
    for a, b in zip(pixels(from_export["images"]), pixels(applied["images"])):
        assert a.dtype == np.uint8 and np.array_equal(a, b)
    print(f"first contact, tiny sd15: {time.perf_counter() - t0:.1f} s")


def test_exported_images_equal_apply_plan_bit_for_bit(tmp_path):
    """The float images (before PNG rounding) of the export and of apply_plan, for a plan with every format."""
    from mpsearch.apps.pipeline import load_pipeline
    from mpsearch.models import describe
    from mpsearch.plan import Plan
    from mpsearch.runtime.checkpoint import export
    from mpsearch.runtime.executor import apply_plan
    from mpsearch.runtime.generation import generate

    build_tiny_pipeline("sd15").save_pretrained(tmp_path / "sd15", safe_serialization=True)
    pipe = load_pipeline(tmp_path / "sd15")
    info = describe(pipe)
    formats = ("int8", "nvfp4", "int4", "fp")
    plan = Plan.from_assignment(info, {l.name: (f if f in l.eligible else "fp") for l, f in
                                       zip(info.layers, formats * len(info.layers))})
    export(pipe, plan, tmp_path / "exp")
    prompts = ["a red cube", "a photograph of an astronaut riding a horse"]
    with apply_plan(pipe, plan):
        generate(pipe, prompts, 5, 1, 2.0, None)  # warm-up: the first 4-bit call of a process rounds apart
        applied = generate(pipe, prompts, 5, 2, 2.0, None)
    exported = generate(load_pipeline(tmp_path / "exp"), prompts, 5, 2, 2.0, None)
    assert np.array_equal(np.asarray(applied), np.asarray(exported))
