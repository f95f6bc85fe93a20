"""A small digit classifier for the content metrics of the embedded default (class agreement, Frechet distance).

It reads what :class:`mpsearch.apps.pipeline.DigitsPipeline` writes: (N, 1, 16, 16) tensors in [0, 1] (a numpy
(N, 16, 16, 1) batch from ``pipe(...).images`` goes through :func:`to_tensor` first). It was trained by
``scripts/train_default.py`` on scikit-learn's digits (8x8, upsampled to 16x16 bilinearly, divided by 16), and
its weights ship as ``assets/classifier.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.errors import ModelError, UsageError

WEIGHTS_PATH = Path(__file__).resolve().parent / "assets" / "classifier.safetensors"
FEATURE_DIM = 64
NUM_CLASSES = 10
IMAGE_SIZE = 16


class DigitClassifier(nn.Module):
    """conv(1->32) - pool - conv(32->64) - pool - linear(1024->64) = features - linear(64->10) = logits."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise UsageError(
                f"DigitClassifier expects images of shape (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}) in [0, 1], got "
                f"{tuple(x.shape)}; convert pipeline output with mpsearch.classifier.to_tensor(images)"
            )
        p = next(self.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations, (N, 64): the feature space of the Frechet distance."""
        x = self._check(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 8x8
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 4x4
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10)."""
        return self.fc2(self.features(x))

    @torch.no_grad()
    def predict(self, x) -> torch.Tensor:
        """Predicted digits (N,) for a tensor (N, 1, 16, 16) or a numpy batch (N, 16, 16, 1), in [0, 1]."""
        return self(to_tensor(x)).argmax(dim=1)


def to_tensor(images) -> torch.Tensor:
    """Pipeline images -> (N, 1, 16, 16) float32 tensor: accepts numpy (N, 16, 16, 1) or tensors (N, 1, 16, 16)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images.permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor):
        raise UsageError(f"expected a numpy array or torch tensor of images, got {type(images).__name__}")
    return images.float()


def load_classifier(path: str | Path | None = None, device=None) -> DigitClassifier:
    """The shipped classifier (eval mode, fp32), or one saved with ``safetensors.torch.save_file`` at ``path``."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise ModelError(
            f"classifier weights not found at {path}; reinstall mpsearch or rebuild them with "
            f"`python scripts/train_default.py`"
        )
    model = DigitClassifier()
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:
        raise ModelError(f"cannot load classifier weights from {path} ({exc}); rebuild them with "
                         f"`python scripts/train_default.py`") from exc
    model.eval()
    if device is not None:
        model.to(device)
    return model


__all__ = ["DigitClassifier", "load_classifier", "to_tensor", "FEATURE_DIM"]
