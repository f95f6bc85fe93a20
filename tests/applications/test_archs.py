"""Real architectures: layer roles and tie groups on tiny versions, and real sizes built on the meta device."""

import json

import pytest
import torch

from mpsearch.apps.cli import main
from mpsearch.archs import arch_report, available_archs, build_meta_denoiser, describe_arch, plan_without_weights
from mpsearch.models import DEFAULT_ROLE_PINS, Role, describe, resolve_role_pins

pytest.importorskip("transformers")

from mpsearch.apps.testing import TINY_BUILDERS, build_tiny_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def tiny_infos():
    return {name: describe(build_tiny_pipeline(name)) for name in TINY_BUILDERS}


# (architecture, layer, role): one line per kind of layer the supported architectures have
EXPECTED_ROLES = [
    ("sd15", "conv_in", Role.IN_PROJ), ("sd15", "conv_out", Role.OUT_PROJ),
    ("sd15", "time_embedding.linear_1", Role.TIME_EMBED),
    ("sd15", "down_blocks.0.resnets.0.time_emb_proj", Role.TIME_EMBED),
    ("sd15", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", Role.SELF_ATTN),
    ("sd15", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", Role.CROSS_ATTN),
    ("sd15", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2", Role.FFN),
    ("sd15", "down_blocks.0.attentions.0.proj_in", Role.CONV),
    ("sd15", "down_blocks.0.resnets.0.conv1", Role.CONV),
    ("sdxl", "add_embedding.linear_1", Role.COND_EMBED),
    ("sdxl", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v", Role.CROSS_ATTN),
    ("pixart-sigma", "adaln_single.linear", Role.MODULATION),
    ("pixart-sigma", "adaln_single.emb.timestep_embedder.linear_1", Role.TIME_EMBED),
    ("pixart-sigma", "caption_projection.linear_1", Role.COND_EMBED),
    ("pixart-sigma", "transformer_blocks.0.attn2.to_k", Role.CROSS_ATTN),
    ("pixart-sigma", "pos_embed.proj", Role.IN_PROJ), ("pixart-sigma", "proj_out", Role.OUT_PROJ),
    ("sd3", "context_embedder", Role.COND_EMBED),
    ("sd3", "time_text_embed.text_embedder.linear_1", Role.COND_EMBED),
    ("sd3", "transformer_blocks.0.norm1_context.linear", Role.MODULATION),
    ("sd3", "transformer_blocks.0.attn.add_k_proj", Role.CROSS_ATTN),
    ("sd3", "transformer_blocks.0.attn.to_add_out", Role.CROSS_ATTN),
    ("sd3", "transformer_blocks.0.attn.to_k", Role.SELF_ATTN),
    ("sd3", "transformer_blocks.0.ff_context.net.2", Role.FFN),
    ("sd3", "norm_out.linear", Role.MODULATION), ("sd3", "proj_out", Role.OUT_PROJ),
    ("flux", "x_embedder", Role.IN_PROJ),
    ("flux", "time_text_embed.guidance_embedder.linear_1", Role.COND_EMBED),
    ("flux", "single_transformer_blocks.0.norm.linear", Role.MODULATION),
    ("flux", "single_transformer_blocks.0.proj_mlp", Role.FFN),
    ("flux", "single_transformer_blocks.0.proj_out", Role.FFN),
    ("dit", "transformer_blocks.0.norm1.linear", Role.MODULATION),
    ("dit", "proj_out_1", Role.MODULATION), ("dit", "proj_out_2", Role.OUT_PROJ),
]


@pytest.mark.parametrize("arch,layer,role", EXPECTED_ROLES)
def test_roles_of_real_architectures(tiny_infos, arch, layer, role):
    assert tiny_infos[arch].layer(layer).role == role


@pytest.mark.parametrize("arch", list(TINY_BUILDERS))
def test_every_layer_has_a_known_role(tiny_infos, arch):
    info = tiny_infos[arch]
    assert [l.name for l in info.layers if l.role == Role.OTHER] == []
    # the roles that carry conditioning are found in every architecture
    assert Role.TIME_EMBED in {l.role for l in info.layers}
    assert {Role.IN_PROJ, Role.OUT_PROJ} <= {l.role for l in info.layers}
    if arch != "dit":
        assert Role.CROSS_ATTN in {l.role for l in info.layers}  # something reads the text
    # every format is exercised somewhere in the tiny versions
    assert {f for l in info.layers for f in l.eligible} == {"fp", "int8", "nvfp4", "int4"}


def test_tie_groups_of_joint_and_single_blocks(tiny_infos):
    sd3 = tiny_infos["sd3"].tie_groups
    assert ("transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.add_k_proj",
            "transformer_blocks.0.attn.add_v_proj") in sd3
    flux = tiny_infos["flux"].tie_groups
    assert ("single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
            "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp") in flux
    pixart = tiny_infos["pixart-sigma"].tie_groups
    assert ("transformer_blocks.0.attn2.to_k", "transformer_blocks.0.attn2.to_v") in pixart  # q reads the image
    assert tiny_infos["flux"].blocks[0] == "transformer_blocks.0" and tiny_infos["flux"].blocks[-1].startswith("single")


def test_attn2_that_is_not_cross_attention_is_self_attention():
    from diffusers.models.attention_processor import Attention

    class TwoSelf(torch.nn.Module):  # SD3.5-medium's second image self-attention is also called attn2
        def __init__(self):
            super().__init__()
            self.attn2 = Attention(query_dim=32, heads=2, dim_head=16)

    roles = {l.name: l.role for l in describe(TwoSelf()).layers}
    assert roles["attn2.to_k"] == Role.SELF_ATTN


def test_default_pins_fall_back_to_fp(tiny_infos):
    info = tiny_infos["dit"]
    pins = resolve_role_pins(info, ("fp", "int8", "nvfp4"))
    assert pins["transformer_blocks.0.norm1.linear"] == DEFAULT_ROLE_PINS[Role.MODULATION] == "int8"
    assert pins["pos_embed.proj"] == "fp" and "transformer_blocks.0.attn1.to_q" not in pins
    assert resolve_role_pins(info, ("fp", "nvfp4"))["transformer_blocks.0.norm1.linear"] == "fp"  # no int8 measured
    assert resolve_role_pins(info, ("fp", "int8"), {}) == {}


# ---------------------------------------------------------------- real size, no weights

# parameter counts of the published checkpoints (diffusers' DiT stores its embedders once per block)
KNOWN_PARAMS = {"sd15": 859_520_964, "sdxl": 2_567_463_684, "flux-dev": 11_901_408_320, "sd3-medium": 2_028_328_000}


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "pixart-sigma", "sd3-medium", "flux-dev"])
def test_real_architectures_on_the_meta_device(arch):
    model = build_meta_denoiser(arch)
    assert all(p.device.type == "meta" for p in model.parameters())
    r = arch_report(arch)
    if arch in KNOWN_PARAMS:
        assert r["params"] == KNOWN_PARAMS[arch]
    # bytes follow the layer dtype: 2 bytes per element at fp16/bf16
    info = describe_arch(arch)
    assert {l.dtype for l in info.layers} == {r["dtype"]} and r["dtype"] in ("float16", "bfloat16")
    assert r["uniform_bytes"]["fp"] == r["fp_bytes"] == r["max_bytes"]
    assert r["min_bytes"] <= r["uniform_bytes"]["int4"] < r["uniform_bytes"]["int8"] < r["fp_bytes"]
    assert r["min_bytes"] <= r["min_bytes_default_pins"] <= r["uniform_bytes"]["int8"] + r["fixed_bytes"]
    assert [b["budget"] for b in r["budgets"]] == ["4GB", "8GB", "12GB"]
    assert all(b["feasible"] == (r["min_bytes"] <= b["bytes"]) for b in r["budgets"])


def test_flux_sizes_by_hand():
    r = arch_report("flux-dev")
    assert r["fp_bytes"] == 2 * r["params"]  # bf16, every parameter is 2 bytes; FLUX has no buffers
    feasible = {b["budget"]: b["feasible"] for b in r["budgets"]}
    assert feasible == {"4GB": False, "8GB": True, "12GB": True}
    fp32 = arch_report("flux-dev", dtype="float32")
    assert fp32["fp_bytes"] == 2 * r["fp_bytes"] and fp32["fixed_bytes"] == 2 * r["fixed_bytes"]
    # packed int8 does not depend on the dtype: only the unquantized parameters double
    assert fp32["uniform_bytes"]["int8"] - r["uniform_bytes"]["int8"] == r["fixed_bytes"]


def test_plan_without_weights_ladder():
    r = plan_without_weights("sdxl", "1.5GB")
    ladder = [s["bytes"] for s in r["role_ladder"]]
    assert ladder == sorted(ladder, reverse=True)  # each step is smaller than the one before
    assert r["feasible"] and r["role_plan"]["bytes"] <= 1_500_000_000
    first_fit = next(s for s in r["role_ladder"] if s["fits"])
    assert r["role_plan"]["step"] == first_fit["step"]
    none = plan_without_weights("flux-dev", "4GB")
    assert not none["feasible"] and none["role_plan"] is None and none["assignment"] is None


def test_cli_inspect_and_solve_arch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "--arch", "pixart-sigma", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["class"] == "PixArtTransformer2DModel" and all(b["feasible"] for b in data["budgets"])
    assert main(["solve", "--arch", "sd3-medium", "--budget", "2GB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["feasible"] and data["plan"] == "plans/sd3-medium-roles-2GB.yaml"
    from mpsearch.plan import Plan

    plan = Plan.load(data["plan"])
    plan.check_model(describe_arch("sd3-medium"))  # the plan applies to the real model as it is
    assert plan.predicted_bytes == data["role_plan"]["bytes"] <= 2_000_000_000
    assert main(["solve", "--arch", "flux-dev", "--budget", "4GB"]) == 0  # answered, not an error
    assert "feasible: no" in capsys.readouterr().out
    assert main(["inspect", "--arch", "sd4"]) == 2
    assert "sd15" in capsys.readouterr().err


def test_shipped_archs_cite_their_source():
    from mpsearch.archs import load_arch

    assert {"sd15", "sdxl", "pixart-sigma", "sd3-medium", "flux-dev"} <= set(available_archs())
    for name in available_archs():
        arch = load_arch(name)
        assert arch["source"] and "config.json" in arch["source"] and arch["config"]
