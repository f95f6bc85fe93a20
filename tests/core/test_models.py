from conftest import tiny_dit, tiny_unet
from torch import nn

from mpsearch.models import Role, classify_role, describe, measured_bytes


class Hand(nn.Module):
    """A module whose sizes can be counted by hand."""

    def __init__(self):
        super().__init__()
        self.proj_in = nn.Linear(16, 32)           # 512 + 32 bias
        self.odd = nn.Linear(12, 8, bias=False)    # 96, input 12: no nvfp4 (16), no int4 (128)
        self.conv = nn.Conv2d(8, 16, 3)            # 1152 + 16 bias; in*kh*kw = 72
        self.dw = nn.Conv2d(16, 16, 3, groups=16)  # grouped conv: no format takes it
        self.norm = nn.LayerNorm(32)               # 64 fixed


def test_hand_counted_bytes_and_eligibility():
    info = describe(Hand())
    names = info.names
    assert names == ("proj_in", "odd", "conv", "dw")
    by = {l.name: l for l in info.layers}
    assert by["proj_in"].eligible == ("fp", "int8", "nvfp4")
    assert by["odd"].eligible == ("fp", "int8")
    assert "multiple" in by["odd"].ineligible["nvfp4"]
    assert by["dw"].eligible == ("fp",) and "grouped" in by["dw"].ineligible["int8"]
    # fixed: biases 32 + 16 + 16 and norm 64 floats
    assert info.fixed_bytes == 4 * (32 + 16 + 16 + 64)
    assert info.fp_bytes == measured_bytes(Hand()) == 4 * (512 + 32 + 96 + 1152 + 16 + 144 + 16 + 64)
    assert info.bytes_for({"proj_in": "int8"}) == info.fp_bytes - 4 * 512 + 512 + 4 * 32
    assert by["proj_in"].role == Role.IN_PROJ and by["conv"].role == Role.CONV


def test_roles_and_ties_on_diffusers_models():
    info = describe(tiny_dit())
    roles = {l.name: l.role for l in info.layers}
    assert roles["transformer_blocks.0.attn1.to_q"] == Role.SELF_ATTN
    assert roles["transformer_blocks.0.ff.net.0.proj"] == Role.FFN
    assert roles["transformer_blocks.0.norm1.linear"] == Role.MODULATION
    assert roles["transformer_blocks.0.norm1.emb.timestep_embedder.linear_1"] == Role.TIME_EMBED
    assert roles["pos_embed.proj"] == Role.IN_PROJ and roles["proj_out_2"] == Role.OUT_PROJ
    assert ("transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k",
            "transformer_blocks.0.attn1.to_v") in info.tie_groups
    assert info.blocks == ("transformer_blocks.0", "transformer_blocks.1")
    unet = describe(tiny_unet())
    assert unet.blocks[0] == "down_blocks.0" and "mid_block" in unet.blocks
    assert {l.role for l in unet.layers} >= {Role.CONV, Role.SELF_ATTN, Role.TIME_EMBED, Role.IN_PROJ, Role.OUT_PROJ}
    assert classify_role("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", nn.Linear(1, 1)) == Role.CROSS_ATTN


def test_fingerprint_tracks_names_and_shapes():
    a, b = describe(tiny_dit(0)), describe(tiny_dit(1))
    assert a.fingerprint == b.fingerprint  # weights differ, layout does not
    assert a.fingerprint != describe(tiny_unet()).fingerprint


def test_size_range_bounds_uniform_plans():
    info = describe(tiny_unet())
    lo, hi = info.size_range()
    assert lo <= info.bytes_for({l.name: "int8" for l in info.layers}) <= hi == info.fp_bytes
