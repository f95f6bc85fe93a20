"""The embedded default pipelines (DiT and UNet), the loader, and the digit classifier. Fast: a few seconds."""

import json

import numpy as np
import pytest
import torch

from mpsearch.apps.pipeline import NULL_CLASS, DigitsPipeline, load_pipeline
from mpsearch.classifier import DigitClassifier, load_classifier, to_tensor
from mpsearch.errors import ModelError, UsageError

LABELS = [0, 3, 7, 9]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These batches are tiny: one thread is as fast, and on a shared machine two spinning OpenMP threads make
    each step 10x slower. Restored afterwards so other test modules keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["default", "default-unet"])
def pipe(request):
    p = load_pipeline(request.param)
    p.set_progress_bar_config(disable=True)
    return p


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_loads_the_right_class_and_denoiser(pipe):
    assert isinstance(pipe, DigitsPipeline)
    if pipe.denoiser_name == "transformer":
        assert type(pipe.denoiser).__name__ == "DiTTransformer2DModel"
        assert pipe.unet is None and pipe.transformer is pipe.denoiser
    else:
        assert type(pipe.denoiser).__name__ == "UNet2DModel"
        assert pipe.transformer is None and pipe.unet is pipe.denoiser
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"  # the first step starts from t=999
    assert not pipe.denoiser.training


def test_default_is_the_dit():
    assert load_pipeline().denoiser_name == "transformer"


def test_shape_range_and_determinism(pipe):
    a = pipe(LABELS, num_inference_steps=4, generator=gen(0)).images
    assert isinstance(a, np.ndarray) and a.shape == (4, 16, 16, 1) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    b = pipe(LABELS, num_inference_steps=4, generator=gen(0)).images
    np.testing.assert_array_equal(a, b)
    c = pipe(LABELS, num_inference_steps=4, generator=gen(1)).images
    assert not np.array_equal(a, c)


def test_pt_output(pipe):
    out = pipe(LABELS, num_inference_steps=2, generator=gen(0), output_type="pt")
    assert isinstance(out.images, torch.Tensor) and out.images.shape == (4, 1, 16, 16)
    assert out.images.dtype == torch.float32 and 0 <= out.images.min() and out.images.max() <= 1
    (tup,) = pipe(LABELS, num_inference_steps=2, generator=gen(0), output_type="pt", return_dict=False)
    torch.testing.assert_close(tup, out.images, rtol=0, atol=0)


def test_guidance_runs_one_batch_of_2n(pipe):
    batches = []
    handle = pipe.denoiser.register_forward_pre_hook(
        lambda mod, args, kwargs: batches.append((args[0].shape[0], kwargs["class_labels"].tolist())),
        with_kwargs=True,
    )
    try:
        g1 = pipe(LABELS, num_inference_steps=3, generator=gen(0), guidance_scale=1.0).images
        assert [b[0] for b in batches] == [4] * 3 and batches[0][1] == LABELS
        batches.clear()
        g3 = pipe(LABELS, num_inference_steps=3, generator=gen(0), guidance_scale=3.0).images
        assert [b[0] for b in batches] == [8] * 3
        assert batches[0][1] == [NULL_CLASS] * 4 + LABELS  # [uncond, cond]
    finally:
        handle.remove()
    assert not np.array_equal(g1, g3)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(class_labels=[]), "empty"),
        (dict(class_labels=[1, 10]), "0..9"),
        (dict(class_labels=[-1]), "0..9"),
        (dict(class_labels=[1.5]), "integers"),
        (dict(class_labels=[1], num_inference_steps=0), "num_inference_steps"),
        (dict(class_labels=[1], guidance_scale=-1.0), "guidance_scale"),
        (dict(class_labels=[1], output_type="pil"), "output_type"),
    ],
)
def test_bad_inputs_raise_usage_error(kwargs, words):
    p = load_pipeline("default")
    with pytest.raises(UsageError, match=words) as info:
        p(**kwargs)
    assert "\n" not in str(info.value)


def test_exactly_one_denoiser():
    p = load_pipeline("default")
    with pytest.raises(UsageError, match="exactly one"):
        DigitsPipeline(scheduler=p.scheduler)
    with pytest.raises(UsageError, match="exactly one"):
        DigitsPipeline(scheduler=p.scheduler, transformer=p.transformer, unet=load_pipeline("default-unet").unet)


def test_loading_is_deterministic():
    a, b = load_pipeline("default-unet").denoiser.state_dict(), load_pipeline("default-unet").denoiser.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shipped_folders_are_plain_diffusers_safetensors_folders():
    from mpsearch.apps.pipeline import EMBEDDED

    for name, comp in (("default", "transformer"), ("default-unet", "unet")):
        folder = EMBEDDED[name]
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == "DigitsPipeline"
        assert index[comp] == ["diffusers", {"transformer": "DiTTransformer2DModel", "unet": "UNet2DModel"}[comp]]
        assert (folder / comp / "diffusion_pytorch_model.safetensors").is_file()
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


def test_save_and_reload_roundtrip(tmp_path):
    p = load_pipeline("default")
    p.save_pretrained(tmp_path / "copy", safe_serialization=True)
    q = load_pipeline(tmp_path / "copy")
    q.set_progress_bar_config(disable=True)
    p.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(
        p([5], num_inference_steps=2, generator=gen(3)).images, q([5], num_inference_steps=2, generator=gen(3)).images
    )


def test_missing_folder_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match="no pipeline folder"):
        load_pipeline(tmp_path / "nope")
    with pytest.raises(ModelError, match="model_index.json"):
        load_pipeline(tmp_path)


def test_unloadable_folder_raises_model_error(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "DigitsPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
                    "unet": ["diffusers", "UNet2DModel"]})
    )
    with pytest.raises(ModelError, match=str(tmp_path.name)) as info:
        load_pipeline(tmp_path)
    assert "\n" not in str(info.value)


def test_classifier_loads_and_shapes():
    clf = load_classifier()
    assert isinstance(clf, DigitClassifier) and not clf.training
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert clf(x).shape == (3, 10)
        assert clf.features(x).shape == (3, 64)
    with pytest.raises(UsageError, match="16"):
        clf(torch.rand(3, 1, 8, 8))


def test_classifier_recognises_real_digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:50], dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    pred = load_classifier().predict(x)
    assert pred[0].item() == digits.target[0]
    assert (pred.numpy() == digits.target[:50]).mean() >= 0.95
    # numpy images in the pipeline's layout work too
    assert load_classifier().predict(x.permute(0, 2, 3, 1).numpy()).tolist() == pred.tolist()
    assert to_tensor(x.permute(0, 2, 3, 1).numpy()).shape == (50, 1, 16, 16)


def test_generated_digits_are_recognised():
    """A smoke check of the shipped weights: most requested digits come out recognisable."""
    clf = load_classifier()
    labels = list(range(10))
    for name in ("default", "default-unet"):
        p = load_pipeline(name)
        p.set_progress_bar_config(disable=True)
        images = p(labels, num_inference_steps=10, generator=gen(0), output_type="pt").images
        assert (clf.predict(images) == torch.tensor(labels)).float().mean().item() >= 0.6, name
