"""A diffusers model folder's denoiser built on the meta device from its ``config.json``, weights unread.

What ``inspect`` shows (layers, roles, shapes, bytes per format, cache units) depends on the shapes and dtypes
of the weights only, so it is computed from a model whose parameters have no storage: a 4 GB SD1.5 UNet is
described in well under 1 GB of memory. The weights file is checked without reading its data: it must exist,
its safetensors header must parse, the file must be as long as the header says, and each tensor's shape must
match the model the config builds (what loading it would refuse, reported the same way).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from mpsearch.errors import ModelError

WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = WEIGHTS + ".index.json"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header's size


def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor entries of a safetensors file's header (name -> dtype, shape, data_offsets), read without the
    data; OSError/ValueError when the file is missing, is not safetensors or is shorter than its header says."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError("the file is shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise ValueError(f"the header claims {n:,} bytes")
        raw = fh.read(n)
        if len(raw) != n:
            raise ValueError("the header is cut short")
        size = os.fstat(fh.fileno()).st_size
    header = json.loads(raw.decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")  # noqa: TRY004 (a damaged file, not a caller's type)
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if size != 8 + n + end:
        raise ValueError(f"the file holds {size:,} bytes, its header describes {8 + n + end:,}")
    return header


def _weights_headers(folder: Path) -> dict[str, dict]:
    index = folder / WEIGHTS_INDEX
    if not (folder / WEIGHTS).exists() and index.is_file():  # sharded: the index names the shards
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        files = [folder / WEIGHTS]
    header: dict[str, dict] = {}
    for f in files:
        header.update(safetensors_header(f))
    return header


def meta_denoiser_from_folder(pipeline_folder: Path, component: str, entry) -> torch.nn.Module:
    """The ``component`` (``"unet"``/``"transformer"``, ``entry`` its model_index ``[library, class]``) of the
    pipeline folder, built on the meta device in the dtype loading gives it; ModelError if it would not load."""
    import diffusers

    folder = pipeline_folder / component

    def fail(why: str) -> ModelError:
        return ModelError(f"cannot load the pipeline at {pipeline_folder} ({why}); check that it is a complete "
                          f"diffusers folder with safetensors weights (re-save with save_pretrained(..., "
                          f"safe_serialization=True))")

    library, class_name = (list(entry) + [None, None])[:2] if isinstance(entry, (list, tuple)) else (None, None)
    cls = getattr(diffusers, str(class_name), None) if library == "diffusers" else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise fail(f"its {component} is {library}.{class_name}, not a diffusers model class")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"{folder / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise fail(f"{folder / 'config.json'} is not a JSON object")
    try:
        header = _weights_headers(folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise fail(f"{component} weights: {type(exc).__name__}: {exc}") from None
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # config keys other classes use
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception as exc:  # diffusers raises many types for a config it cannot build
        raise fail(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    finally:
        diffusers.utils.logging.set_verbosity(level)
    state = model.state_dict()
    for name, rec in header.items():
        if name in state and list(state[name].shape) != list(rec.get("shape", [])):
            raise fail(f"{component} weight {name} has shape {rec.get('shape')}, its config makes "
                       f"{list(state[name].shape)}")
    return model.eval()
