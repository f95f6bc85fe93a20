"""Shared fixtures: tiny random-weight pipelines built from configs (fast, offline)."""

import os

# NVFP4 W4A4 on the CPU runs on the bfloat16 GEMM where that is faster (not bit for bit the reference); the
# tests pin the float path, bit for bit the reference on any CPU, and test the bfloat16 path on its own
# (``nvfp4=float`` added to MPSEARCH_KERNELS unless it names an NVFP4 path itself)
_SPEC = os.environ.get("MPSEARCH_KERNELS", "")
if "nvfp4=" not in _SPEC.replace(" ", ""):
    os.environ["MPSEARCH_KERNELS"] = ",".join(s for s in (_SPEC.strip(), "nvfp4=float") if s)

import pytest  # noqa: E402
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel, UNet2DModel

from mpsearch.apps.pipeline import DigitsPipeline
from mpsearch.runtime.kernels import using_kernels


def tiny_dit(seed: int = 0) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1,
                                 num_layers=2, sample_size=16, patch_size=4, num_embeds_ada_norm=10).eval()


def tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 128),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=8, num_class_embeds=11, attention_head_dim=32).eval()


def _scheduler():
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


@pytest.fixture
def dit_pipe():
    pipe = DigitsPipeline(scheduler=_scheduler(), transformer=tiny_dit())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def unet_pipe():
    pipe = DigitsPipeline(scheduler=_scheduler(), unet=tiny_unet())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=["dit", "unet"])
def any_pipe(request):
    build = tiny_dit if request.param == "dit" else tiny_unet
    kw = {"transformer": build()} if request.param == "dit" else {"unet": build()}
    pipe = DigitsPipeline(scheduler=_scheduler(), **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pytest_collection_modifyitems(config, items):
    """gpu-marked tests need CUDA: without it they are skipped with a visible reason, never silently."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: it holds folder names too
            item.add_marker(skip)


class Tiny(torch.nn.Module):
    """Linear(3, 4) -> tanh -> Linear(4, out), seeded: small enough to check gradients and traces by hand."""

    def __init__(self, out=1):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(3, 4)
        self.b = torch.nn.Linear(4, out)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.fixture
def int_mm():
    """INT8 on torch._int_mm (what the int8 CPU kernels, compiled or not, run), on any CPU."""
    with using_kernels("int8=int_mm"):
        yield
