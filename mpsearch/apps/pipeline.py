"""The embedded default pipelines and a loader for local diffusers pipeline folders.

``DigitsPipeline`` is a small class-conditional, pixel-space diffusion pipeline (16x16, one channel) trained on
scikit-learn's digits data set by ``scripts/train_default.py``. Two variants ship with the package:

* ``"default"``: a DiT-style transformer (``diffusers.DiTTransformer2DModel``), in ``assets/default-dit/``;
* ``"default-unet"``: a small UNet (``diffusers.UNet2DModel``), in ``assets/default-unet/``.

Both are ordinary diffusers pipeline folders (``model_index.json``, ``transformer/`` or ``unet/``,
``scheduler/``) in safetensors, so everything that works on a local diffusers folder works on them too.

Class-conditional generation with classifier-free guidance: the classes are the digits 0..9 and the null
("unconditional") class id is ``NULL_CLASS`` = 10. With ``guidance_scale > 1`` each denoising step runs ONE
batch of 2N through the denoiser, ordered ``[uncond (N), cond (N)]``, and combines
``eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)``.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from mpsearch.apps.meta_load import meta_denoiser_from_folder
from mpsearch.errors import ModelError, UsageError
from mpsearch.formats.kernel_errors import is_out_of_memory
from mpsearch.runtime.checkpoint import (
    is_checkpoint,
    load_quantized,
    meta_denoiser,
    read_index,
)

NUM_CLASSES = 10
NULL_CLASS = 10
IMAGE_SIZE = 16
DEFAULT_GUIDANCE_SCALE = 1.5
DEFAULT_STEPS = 20

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED = {
    "default": ASSETS_DIR / "default-dit",
    "default-dit": ASSETS_DIR / "default-dit",
    "default-unet": ASSETS_DIR / "default-unet",
}


class DigitsPipeline(DiffusionPipeline):
    """Class-conditional 16x16 digit generation with a DiT (``transformer``) or a UNet (``unet``) denoiser.

    Exactly one of ``transformer`` / ``unet`` is given; the other is registered as ``None`` (the diffusers
    convention for optional components, so ``pipe.to(...)``, ``pipe.components`` and ``save_pretrained`` see
    both names). ``pipe.denoiser`` returns whichever is set.
    """

    model_cpu_offload_seq = "transformer->unet"
    _optional_components = ["transformer", "unet"]

    def __init__(self, scheduler, transformer=None, unet=None):
        super().__init__()
        if (transformer is None) == (unet is None):
            raise UsageError(
                "DigitsPipeline needs exactly one denoiser: pass transformer=<DiTTransformer2DModel> or "
                "unet=<UNet2DModel>, not both and not neither"
            )
        self.register_modules(transformer=transformer, unet=unet, scheduler=scheduler)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The model mpsearch plans: the transformer for the DiT variant, the UNet for the UNet variant."""
        transformer = getattr(self, "transformer", None)
        return transformer if transformer is not None else self.unet

    @property
    def denoiser_name(self) -> str:
        """``"transformer"`` or ``"unet"``: the component name of :attr:`denoiser`."""
        return "transformer" if getattr(self, "transformer", None) is not None else "unet"

    def _check_inputs(self, class_labels, num_inference_steps, guidance_scale, output_type) -> torch.Tensor:
        if isinstance(class_labels, int):
            class_labels = [class_labels]
        try:
            labels = torch.as_tensor(class_labels)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"class_labels must be a list of digits 0..9, got {class_labels!r} ({exc}); pass e.g. [0, 1, 2]"
            ) from None
        labels = labels.reshape(-1)
        if labels.numel() == 0:
            raise UsageError("class_labels is empty; pass at least one digit 0..9, e.g. class_labels=[3]")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            if labels.dtype == torch.bool or not torch.equal(labels, labels.round()):
                raise UsageError(f"class_labels must be integers 0..9, got {labels.tolist()}; pass whole digits")
        labels = labels.long()
        bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
        if bad.numel():
            raise UsageError(
                f"class_labels must be digits 0..{NUM_CLASSES - 1}, got {sorted(set(bad.tolist()))}; "
                f"the null class {NULL_CLASS} is used internally for guidance"
            )
        if not isinstance(num_inference_steps, (int, np.integer)) or isinstance(num_inference_steps, bool):
            raise UsageError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise UsageError(f"num_inference_steps must be >= 1, got {num_inference_steps}; use e.g. 20")
        train_steps = self.scheduler.config.num_train_timesteps
        if num_inference_steps > train_steps:
            raise UsageError(
                f"num_inference_steps={num_inference_steps} exceeds the {train_steps} training timesteps; "
                f"use at most {train_steps}"
            )
        if (
            not isinstance(guidance_scale, numbers.Real)
            or isinstance(guidance_scale, bool)
            or not np.isfinite(guidance_scale)
            or guidance_scale < 0
        ):
            raise UsageError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}; use e.g. 1.5")
        if output_type not in ("np", "pt"):
            raise UsageError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        return labels

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        num_inference_steps: int = DEFAULT_STEPS,
        generator: torch.Generator | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        output_type: str = "np",
        return_dict: bool = True,
    ):
        """Generate one 16x16 image per label.

        Args:
            class_labels: digits 0..9 (list, int or tensor), one image each.
            num_inference_steps: DDIM steps (>= 1).
            generator: ``torch.Generator`` for the initial noise (on the denoiser's device); same generator
                state -> same images.
            guidance_scale: classifier-free guidance weight; ``<= 1`` runs the conditional model only (one batch
                of N), ``> 1`` runs ``[uncond, cond]`` as one batch of 2N.
            output_type: ``"np"`` -> float32 array (N, 16, 16, 1) in [0, 1]; ``"pt"`` -> tensor (N, 1, 16, 16)
                in [0, 1].
            return_dict: return ``ImagePipelineOutput`` (else a 1-tuple).
        """
        labels = self._check_inputs(class_labels, num_inference_steps, guidance_scale, output_type)
        model = self.denoiser
        device = self._execution_device  # not the weights' device: offloaded weights live on the CPU or meta
        dtype = next(model.parameters()).dtype
        n = labels.shape[0]
        labels = labels.to(device)
        channels = model.config.in_channels
        size = model.config.sample_size
        size = size if isinstance(size, int) else size[0]

        sample = torch.randn(
            (n, channels, size, size), generator=generator, device=device, dtype=torch.float32
        )
        sample = sample * self.scheduler.init_noise_sigma

        use_cfg = guidance_scale > 1.0
        if use_cfg:
            model_labels = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
        else:
            model_labels = labels

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([sample, sample]) if use_cfg else sample
            model_in = self.scheduler.scale_model_input(model_in, t)
            timesteps = t.reshape(1).expand(model_in.shape[0]).to(device)
            eps = model(model_in.to(dtype), timesteps, class_labels=model_labels).sample.float()
            if use_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            sample = self.scheduler.step(eps, t, sample).prev_sample

        images = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "np":
            images = images.cpu().permute(0, 2, 3, 1).numpy().astype(np.float32)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _resolve(name_or_path) -> Path:
    if isinstance(name_or_path, str) and name_or_path in EMBEDDED:
        return EMBEDDED[name_or_path]
    return Path(name_or_path).expanduser()


# safetensors only (never pickle), nothing downloaded; low_cpu_mem_usage=False silences the "install
# accelerate" warning and changes nothing for models this size.
_LOAD_KWARGS = dict(use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False)


def _folder(name_or_path) -> tuple[Path, bool]:
    """The pipeline folder ``name_or_path`` names, and whether it is an embedded default (ModelError if none)."""
    path = _resolve(name_or_path)
    embedded = isinstance(name_or_path, str) and name_or_path in EMBEDDED
    if not path.is_dir():
        if embedded:
            raise ModelError(
                f"the embedded model {name_or_path!r} is missing at {path}; reinstall mpsearch or rebuild it "
                f"with `python scripts/train_default.py`"
            )
        raise ModelError(
            f"no pipeline folder at {path}; pass 'default', 'default-unet' or a local diffusers pipeline "
            f"folder (one saved with save_pretrained)"
        )
    return path, embedded


def _read_model_index(path: Path) -> dict:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelError(
            f"{path} has no model_index.json, so it is not a diffusers pipeline folder; save the pipeline with "
            f"pipe.save_pretrained({str(path)!r}) or pass the folder that holds model_index.json"
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {index_file}: {exc}; fix or re-save the pipeline folder") from None
    if not isinstance(index, dict):
        raise ModelError(f"cannot read {index_file}: it holds {type(index).__name__}, not a JSON object; fix or "
                         f"re-save the pipeline folder")
    return index


def load_pipeline(name_or_path="default", device=None) -> DiffusionPipeline:
    """Load the embedded default (``"default"`` = DiT, ``"default-unet"``) or a local diffusers pipeline folder.

    Only safetensors weights are read and nothing is downloaded. A folder whose ``model_index.json`` names
    ``DigitsPipeline`` loads as :class:`DigitsPipeline`; any other loads through
    ``diffusers.DiffusionPipeline.from_pretrained(path, local_files_only=True)``. A folder written by
    ``mpsearch.export`` loads its packed denoiser straight onto ``device``, never in full precision.

    Raises:
        ModelError: the folder is missing, has no ``model_index.json``, or does not load (CheckpointError, a
            ModelError, for an exported folder that is incomplete, tampered with or mismatched).
    """
    path, embedded = _folder(name_or_path)
    if is_checkpoint(path):  # an exported quantized checkpoint: the denoiser is built from its packed weights
        digits = read_index(path).get("_class_name") == DigitsPipeline.__name__  # its digest checked first
        pipe = load_quantized(path, device, pipeline_class=DigitsPipeline if digits else None, **_LOAD_KWARGS)
        _tag(pipe, name_or_path, path, embedded)
        return pipe
    class_name = _read_model_index(path).get("_class_name")
    try:
        if class_name == DigitsPipeline.__name__:
            pipe = DigitsPipeline.from_pretrained(path, **_LOAD_KWARGS)
        else:
            pipe = DiffusionPipeline.from_pretrained(path, **_LOAD_KWARGS)
    except Exception as exc:  # diffusers raises many types (OSError, ValueError, EnvironmentError, ...)
        if is_out_of_memory(exc):  # the folder is fine: the device is full
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load the pipeline at {path} ({first}); check that it is a complete "
            f"diffusers folder with safetensors weights (re-save with save_pretrained(..., safe_serialization=True))"
        ) from exc
    if device is not None:
        pipe = pipe.to(device)
    _tag(pipe, name_or_path, path, embedded)
    return pipe


def load_meta_denoiser(name_or_path="default") -> torch.nn.Module:
    """The denoiser of ``name_or_path`` (as :func:`load_pipeline` takes it) on the meta device, built from its
    config: real layer names, shapes and dtypes, no weights read (for ``inspect``). For an exported folder it is
    the denoiser before quantization, checked against the folder's plan.

    Raises:
        ModelError: as :func:`load_pipeline` would for the same folder.
    """
    path, _ = _folder(name_or_path)
    if is_checkpoint(path):
        return meta_denoiser(path)
    index = _read_model_index(path)
    for component in ("transformer", "unet"):
        entry = index.get(component)
        if isinstance(entry, (list, tuple)) and any(e is not None for e in entry):
            return meta_denoiser_from_folder(path, component, entry)
    raise ModelError(f"the pipeline at {path} ({index.get('_class_name')}) has no 'transformer' or 'unet' "
                     f"component to plan; pass a diffusion pipeline folder whose model_index.json names one")


def _tag(pipe, name_or_path, path: Path, embedded: bool) -> None:
    """Record on ``pipe`` what it was loaded from: ``mpsearch_name`` names its default profile file,
    ``mpsearch_source`` (the embedded name or the folder's absolute path) is what its profile records, so a
    later command can load the same model without ``--model``."""
    pipe.mpsearch_name = name_or_path if embedded else path.name
    pipe.mpsearch_source = name_or_path if embedded else str(path.resolve())


__all__ = ["DigitsPipeline", "load_pipeline", "load_meta_denoiser", "NUM_CLASSES", "NULL_CLASS",
           "DEFAULT_GUIDANCE_SCALE"]
