"""Quantized checkpoints: a pipeline folder whose denoiser holds a plan's packed weights, and a loader that
never materializes the full-precision denoiser.

An exported folder is an ordinary diffusers pipeline folder (every other component written with
``save_pretrained``, safetensors) plus:

    <denoiser>/config.json                   the denoiser's config (no weights)
    <denoiser>/mpsearch-packed.safetensors   the packed codes and scales of the quantized layers, and every other
                                             parameter and buffer of the planned denoiser as it is
    <denoiser>/mpsearch-plan.yaml            the plan
    mpsearch-checkpoint.json                 the manifest: format version, fingerprint, each tensor's name, shape
                                             and dtype, the byte count, sha256 digests of the two files above

Loading builds the denoiser from its config on the meta device (no weight is allocated), reads each tensor of
the file into fresh memory on the target device (one sequential pass that also checks the digest; no mmap, so
an accelerator's host never holds more than one tensor in flight), installs the quantized modules around the
packed tensors and assigns the rest. The denoiser's peak memory is the plan's bytes plus one tensor.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mpsearch.cache_units import CacheUnit
from mpsearch.errors import ModelError
from mpsearch.formats import Packed
from mpsearch.formats.kernel_errors import is_out_of_memory
from mpsearch.io import atomic_write_text, staging_folder
from mpsearch.models import describe, get_denoiser, measured_bytes
from mpsearch.plan import Plan
from mpsearch.runtime.cache_hooks import FeatureCacheConfig, apply_feature_cache
from mpsearch.runtime.executor import activation_windows, apply_plan
from mpsearch.runtime.qmodules import quantized_module
from mpsearch.runtime.steps import acquire_step_state
from mpsearch.runtime.tensorfile import dtype_name, read_tensors, sha256_file

FORMAT_VERSION = 1
MANIFEST = "mpsearch-checkpoint.json"
TENSORS = "mpsearch-packed.safetensors"
PLAN = "mpsearch-plan.yaml"
_KIND = "mpsearch-checkpoint"
_SEP = ":"  # packed tensor keys are "<layer>:<key>"; module names never hold a colon
_REEXPORT = "re-export it with `mpsearch export --model M --plan P --out DIR`"


class CheckpointError(ModelError):
    """A quantized checkpoint folder is incomplete, tampered with, or does not match its plan."""


def is_checkpoint(path) -> bool:
    """Whether ``path`` is a folder written by :func:`export` (it holds the manifest)."""
    return (Path(path) / MANIFEST).is_file()


def _component(pipe, denoiser) -> str:
    for name in ("transformer", "unet"):
        if getattr(pipe, name, None) is denoiser:
            return name
    raise ModelError(f"export needs a diffusers pipeline whose denoiser is its 'transformer' or 'unet'; got "
                     f"{type(pipe).__name__}; pass the pipeline, not the denoiser module")


def _collect(denoiser, plan: Plan):
    """The applied denoiser's tensors to save, the quantized layers' records, and aliases of shared tensors."""
    modules = dict(denoiser.named_modules())
    tensors, layers, packed_ids = {}, {}, set()
    for name, fmt in plan.layers.items():
        if fmt == "fp":
            continue
        packed = modules[name].packed()
        keys = {}
        for key, t in packed.tensors.items():
            keys[key] = f"{name}{_SEP}{key}"
            tensors[keys[key]] = t
            packed_ids.add(id(t))
        layers[name] = {"format": packed.format, "shape": list(packed.shape), "dtype": dtype_name(packed.dtype),
                        "tensors": keys}
    canonical, aliases = {}, {}
    for kind, named in (("parameter", denoiser.named_parameters(remove_duplicate=False)),
                        ("buffer", denoiser.named_buffers(remove_duplicate=False))):
        for name, t in named:
            if id(t) in packed_ids:
                continue
            if id(t) in canonical:
                aliases[name] = canonical[id(t)]
                continue
            canonical[id(t)] = name
            tensors[name] = t
    return tensors, layers, aliases


def _save_components(pipe, component: str, denoiser, folder: Path) -> None:
    """Every component but the denoiser, with the pipeline's own save_pretrained (safetensors)."""
    from diffusers.utils import logging as dlogging

    entry = list(pipe.config[component])
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # "unet=None cannot be saved": exactly what is meant here
    pipe.register_modules(**{component: None})
    try:
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        pipe.register_modules(**{component: denoiser})
        dlogging.set_verbosity(level)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index[component] = entry
    atomic_write_text(index_file, json.dumps(index, indent=2, sort_keys=True) + "\n")


def _check_target(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (is_checkpoint(out) or not any(out.iterdir()))):
        raise CheckpointError(f"{out} exists and is not an mpsearch checkpoint; choose a new --out folder (an "
                              f"older checkpoint there would be replaced)")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an older checkpoint there is replaced as a whole."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "folder")
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:  # put the older checkpoint back
            os.replace(old / "folder", out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(pipe, plan: Plan, out, *, ignore_weights: bool = False) -> Path:
    """Write ``pipe`` with its denoiser quantized by ``plan`` as a pipeline folder at ``out``; returns its path.

    The denoiser is stored packed (safetensors), exactly as ``apply_plan`` holds it, with the plan and a
    manifest; the other components are saved with ``save_pretrained``. Load it with
    ``mpsearch.load_pipeline(out)``. The folder appears whole or not at all; the pipeline is left unchanged.
    """
    out = Path(out).expanduser()
    denoiser = get_denoiser(pipe)
    component = _component(pipe, denoiser)
    _check_target(out)
    handle = apply_plan(pipe, plan, stash="memory", ignore_weights=ignore_weights)
    try:
        tensors, layers, aliases = _collect(denoiser, plan)
        nbytes = measured_bytes(denoiser)
    finally:
        handle.remove()
    tensors = {k: (t.detach().cpu().contiguous() if t.untyped_storage().nbytes() == t.nbytes
                   else t.detach().cpu().clone()) for k, t in tensors.items()}  # views are saved on their own
    saved = sum(t.nbytes for t in tensors.values())
    predicted = plan.predictions.get("bytes")
    if saved != nbytes or (predicted is not None and predicted != nbytes):
        raise CheckpointError(f"the planned denoiser holds {nbytes:,} B, the plan predicts {predicted} B and "
                              f"{saved:,} B would be saved; this is a bug in mpsearch, please report it")
    from safetensors.torch import save_file

    tmp = staging_folder(out, CheckpointError)
    try:
        _save_components(pipe, component, denoiser, tmp)
        sub = tmp / component
        sub.mkdir(exist_ok=True)
        denoiser.save_config(sub)
        save_file(tensors, str(sub / TENSORS), metadata={"format": _KIND})
        plan.save(sub / PLAN)
        manifest = {
            "format": _KIND, "format_version": FORMAT_VERSION, "component": component,
            "denoiser_class": type(denoiser).__name__, "fingerprint": plan.fingerprint, "bytes": nbytes,
            "plan": f"{component}/{PLAN}", "plan_digest": sha256_file(sub / PLAN),
            "tensors_file": f"{component}/{TENSORS}", "file_bytes": (sub / TENSORS).stat().st_size,
            "digest": sha256_file(sub / TENSORS),
            "tensors": {k: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)} for k, t in tensors.items()},
            "layers": layers, "aliases": aliases,
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        _replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write {out}: {e.strerror or e}; choose a writable output folder "
                                  f"with room for the checkpoint") from None
        raise
    return out


# ---- loading


def read_manifest(folder) -> dict:
    """The manifest of an exported folder, checked for its format, version and keys (CheckpointError if not)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no {MANIFEST}, so it is not an mpsearch checkpoint; {_REEXPORT}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); the checkpoint is damaged, {_REEXPORT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _KIND:
        raise CheckpointError(f"{path} is not an mpsearch checkpoint manifest; {_REEXPORT}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {manifest.get('format_version')!r}; this "
                              f"mpsearch reads version {FORMAT_VERSION}: upgrade mpsearch or {_REEXPORT}")
    types = {"component": str, "denoiser_class": str, "fingerprint": str, "bytes": int, "plan": str,
             "plan_digest": str, "tensors_file": str, "file_bytes": int, "digest": str, "tensors": dict,
             "layers": dict, "aliases": dict}
    bad = [k for k, t in types.items() if not isinstance(manifest.get(k), t)]
    if bad:
        raise CheckpointError(f"{path} lacks or mistypes {', '.join(bad)}; the checkpoint is damaged, {_REEXPORT}")
    return manifest


def _assign(model: torch.nn.Module, name: str, t: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
    except AttributeError:
        owner = None
    params = dict(owner.named_parameters(recurse=False)) if owner is not None else {}
    buffers = dict(owner.named_buffers(recurse=False)) if owner is not None else {}
    if attr in params:
        setattr(owner, attr, t if isinstance(t, torch.nn.Parameter)
                else torch.nn.Parameter(t, requires_grad=params[attr].requires_grad))
    elif attr in buffers:
        setattr(owner, attr, t)
    else:
        raise CheckpointError(f"the checkpoint holds {name!r}, which the denoiser built from its config does not "
                              f"have; the folder mixes two models, {_REEXPORT}")


def _meta_left(model: torch.nn.Module) -> list[str]:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    for mname, mod in model.named_modules():
        left += [f"{mname}.{k}" for k, v in vars(mod).items() if isinstance(v, torch.Tensor) and v.is_meta]
    return left


def load_denoiser(folder, device=None) -> tuple[torch.nn.Module, Plan]:
    """The planned denoiser of an exported folder and its plan, built without full-precision weights.

    The denoiser is built on the meta device from its config; the packed and remaining tensors are read
    straight onto ``device`` (default CPU); the plan's activation windows and feature cache are installed.
    Raises CheckpointError (one line) for a missing, truncated or tampered file or a plan that does not match.
    """
    import diffusers

    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    device = torch.device(device or "cpu")
    plan_path = folder / manifest["plan"]
    if not plan_path.is_file():
        raise CheckpointError(f"the plan {plan_path} is missing; the checkpoint is incomplete, {_REEXPORT}")
    if sha256_file(plan_path) != manifest["plan_digest"]:
        raise CheckpointError(f"the plan {plan_path} does not match the digest in {MANIFEST} (changed after "
                              f"export); a checkpoint's plan cannot be swapped: {_REEXPORT}")
    plan = Plan.load(plan_path)
    config_path = folder / manifest["component"] / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the denoiser config {config_path} ({e}); {_REEXPORT}") from None
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None or cls.__name__ != manifest["denoiser_class"]:
        raise CheckpointError(f"{config_path} names {config.get('_class_name')!r}, the manifest "
                              f"{manifest['denoiser_class']!r}; {_REEXPORT}")
    with torch.device("meta"):
        model = cls.from_config(config)
    fingerprint = describe(model).fingerprint
    if plan.fingerprint != fingerprint or manifest["fingerprint"] != fingerprint:
        raise CheckpointError(f"the plan's fingerprint {plan.fingerprint} does not match the denoiser its config "
                              f"describes ({fingerprint}); the folder mixes two models, {_REEXPORT}")
    tensors = read_tensors(folder / manifest["tensors_file"], device, file_bytes=manifest["file_bytes"],
                           digest=manifest["digest"], expected=manifest["tensors"], error=CheckpointError,
                           fix=f"copy the folder again or {_REEXPORT}", desc="loading packed denoiser")

    modules, windows, qmods = dict(model.named_modules()), activation_windows(plan), []
    quantized = {n for n, f in plan.layers.items() if f != "fp"}
    if quantized != set(manifest["layers"]):
        raise CheckpointError(f"the manifest's packed layers are not the plan's quantized layers; {_REEXPORT}")
    for name, rec in manifest["layers"].items():
        if rec.get("format") != plan.layers[name]:
            raise CheckpointError(f"layer {name!r} is packed as {rec.get('format')!r}, the plan says "
                                  f"{plan.layers[name]!r}; {_REEXPORT}")
        try:
            packed = Packed(rec["format"], tuple(rec["shape"]), getattr(torch, rec["dtype"]),
                            {key: tensors.pop(tname) for key, tname in rec["tensors"].items()})
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"the manifest's record of layer {name!r} is damaged; {_REEXPORT}") from None
        qmod = quantized_module(modules[name], packed, windows.get(name, ()))
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent] if parent else model, attr, qmod)
        qmods.append(qmod)
    for name, t in tensors.items():
        _assign(model, name, t)
    for alias, target in manifest["aliases"].items():
        owner_name, _, attr = target.rpartition(".")
        _assign(model, alias, getattr(model.get_submodule(owner_name) if owner_name else model, attr))
    left = _meta_left(model)
    if left:
        raise CheckpointError(f"the checkpoint does not hold {', '.join(left[:3])} (and {max(len(left) - 3, 0)} "
                              f"more) of the denoiser; {_REEXPORT}")
    model.eval()
    if measured_bytes(model) != manifest["bytes"]:
        raise CheckpointError(f"the loaded denoiser holds {measured_bytes(model):,} B, the manifest says "
                              f"{manifest['bytes']:,} B; {_REEXPORT}")
    if windows:
        state = acquire_step_state(model)  # held for the loaded model's lifetime, like an applied plan's
        for qmod in qmods:
            qmod.step_state = state
    if plan.cache is not None:
        config = FeatureCacheConfig(CacheUnit.from_dict(plan.cache["unit"]), tuple(plan.cache["compute"]))
        config.unit.check(model)
        apply_feature_cache(model, config)
    return model, plan


def load_quantized(folder, device=None, *, pipeline_class=None, **from_pretrained_kwargs):
    """The pipeline of an exported folder: its denoiser from :func:`load_denoiser` (no full-precision weights),
    the other components with ``pipeline_class.from_pretrained`` (default ``diffusers.DiffusionPipeline``)."""
    from diffusers import DiffusionPipeline

    folder = Path(folder).expanduser()
    denoiser, _ = load_denoiser(folder, device)
    component = read_manifest(folder)["component"]
    kwargs = {"use_safetensors": True, "local_files_only": True, **from_pretrained_kwargs}
    try:
        pipe = (pipeline_class or DiffusionPipeline).from_pretrained(folder, **{component: denoiser}, **kwargs)
    except Exception as exc:  # diffusers raises many types
        if is_out_of_memory(exc):  # the folder is fine: the device is full
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load the other components of {folder} ({type(exc).__name__}: {first}); "
                              f"copy the folder again or {_REEXPORT}") from exc
    return pipe.to(device) if device is not None else pipe


__all__ = ["export", "load_quantized", "load_denoiser", "read_manifest", "is_checkpoint", "CheckpointError",
           "FORMAT_VERSION"]
