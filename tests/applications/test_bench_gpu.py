"""scripts/bench_gpu.py's logic runs on the CPU (``--dry-run``: tiny SDXL and FLUX pipelines), and the real-size
SDXL and FLUX pipelines it benchmarks assemble with consistent shapes (on the meta device: no memory)."""

import json
import sys
from pathlib import Path

import torch

from mpsearch.apps.testing import real_size_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_bench_gpu_dry_run(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    doc = ROOT / "docs" / "benchmarks.md"
    before = doc.read_bytes() if doc.exists() else None
    out = tmp_path / "r.json"
    report = bench_gpu.main(["--dry-run", "--rounds", "1", "--out", str(out), "--tmp", str(tmp_path)])
    assert json.loads(out.read_text())["dry_run"] is True
    assert [r["model"] for r in report["results"]] == ["sdxl", "flux-dev"]
    for r in report["results"]:
        plans = r["plans"]
        assert set(plans) == {"float32", "uniform int8", "uniform int4", "uniform nvfp4", "solved 35%"}
        for label, m in plans.items():
            assert m["plan_bytes"] == m["denoiser_bytes"], label  # bytes are exact
            assert m["seconds"] > 0
        assert len(r["solved_formats"]) > 1  # a mix of formats
        assert plans["solved 35%"]["plan_bytes"] <= 0.35 * r["fp_bytes"] + 1
        loaded = r["loaded"]
        assert loaded["denoiser_bytes"] == plans["solved 35%"]["plan_bytes"]
        assert loaded["rel_mse"] == plans["solved 35%"]["rel_mse"]  # the loaded folder runs the same numbers
    assert (doc.read_bytes() if doc.exists() else None) == before  # a dry run never writes the benchmarks


def test_real_size_sdxl_and_flux_assemble():
    pipe = real_size_pipeline("flux-dev", dtype=torch.bfloat16, device="meta")
    t = pipe.transformer
    assert next(t.parameters()).is_meta and next(t.parameters()).dtype == torch.bfloat16
    assert 11.8e9 < sum(p.numel() for p in t.parameters()) < 12.0e9
    embeds, pooled, _ = pipe.encode_prompt("a cat", prompt_2=None, device="cpu", max_sequence_length=512)
    assert embeds.shape == (1, 512, t.config.joint_attention_dim)
    assert pooled.shape == (1, t.config.pooled_projection_dim)
    assert pipe.vae.config.latent_channels * 4 == t.config.in_channels
    unet = real_size_pipeline("sdxl", dtype=torch.bfloat16, device="meta").unet
    assert 2.5e9 < sum(p.numel() for p in unet.parameters()) < 2.6e9
