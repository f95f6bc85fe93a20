"""Quantized checkpoints: a pipeline folder whose denoiser holds a plan's packed weights, and a loader that
never materializes the full-precision denoiser.

An exported folder is an ordinary diffusers pipeline folder (every other component written with
``save_pretrained``, safetensors) plus:

    <denoiser>/config.json                   the denoiser's config (no weights)
    <denoiser>/mpsearch-packed.safetensors   the packed codes and scales of the quantized layers, and every other
                                             parameter and buffer of the planned denoiser as it is
    <denoiser>/mpsearch-plan.yaml            the plan
    mpsearch-checkpoint.json                 the manifest (:mod:`mpsearch.runtime.manifest`): format version,
                                             fingerprint, each tensor's name, shape and dtype, the byte count, and
                                             the size and BLAKE3 digest of EVERY other file in the folder

Loading first checks the folder against its manifest (every named path a plain relative name inside the
folder, every file there listed, regular and of its size), reads the plan and the denoiser's config once and
checks their digests on those bytes, builds the denoiser from its config on the meta device (no weight is
allocated), reads each tensor of the file into fresh memory on the target device (one sequential pass that also
checks the digest; no mmap, so an accelerator's host never holds more than one tensor in flight), installs the
quantized modules around the packed tensors and assigns the rest. The denoiser's peak memory is the plan's
bytes plus one tensor. The other components' files are checked against their digests before diffusers reads
them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
import yaml

from mpsearch.errors import ModelError, PlanError
from mpsearch.formats import Packed
from mpsearch.formats.kernel_errors import is_out_of_memory
from mpsearch.io import apply_umask_tree, atomic_write_text, replace_folder, staging_folder
from mpsearch.models import describe, get_denoiser, measured_bytes
from mpsearch.plan import Plan
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.install import install
from mpsearch.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    REEXPORT,
    CheckpointError,
    LayerRecord,
    Manifest,
    check_files,
    inside,
    read_manifest,
    read_verified,
    record_files,
    verify_files,
)
from mpsearch.runtime.tensorfile import dtype_name, read_tensors

TENSORS = "mpsearch-packed.safetensors"
PLAN = "mpsearch-plan.yaml"
_KIND = "mpsearch-checkpoint"
_SEP = ":"  # packed tensor keys are "<layer>:<key>"; module names never hold a colon
_REEXPORT = REEXPORT


def is_checkpoint(path) -> bool:
    """Whether ``path`` is a folder written by :func:`export` (it holds the manifest, or something in its
    place, which loading then reports)."""
    return os.path.lexists(Path(path) / MANIFEST)


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
        layers[name] = LayerRecord(packed.format, tuple(packed.shape), dtype_name(packed.dtype), keys)
    canonical, aliases = {}, {}
    for _kind, named in (("parameter", denoiser.named_parameters(remove_duplicate=False)),
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
        # the calibrated variants' codes are packed already: the folder's plan needs no calibration file
        dataclasses.replace(plan, calibration={}).save(sub / PLAN)
        apply_umask_tree(tmp)  # what every writer above made gets the user's umask (safetensors writes 0600)
        manifest = Manifest(
            component=component, denoiser_class=type(denoiser).__name__, fingerprint=plan.fingerprint,
            bytes=nbytes, plan=f"{component}/{PLAN}", tensors_file=f"{component}/{TENSORS}",
            files=record_files(tmp),  # every file written, so every file the loader reads
            tensors={k: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)} for k, t in tensors.items()},
            layers=layers, aliases=aliases)
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest.to_dict(), indent=1) + "\n")
        replace_folder(tmp, out, CheckpointError)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write {out}: {e.strerror or e}; choose a writable output folder "
                                  f"with room for the checkpoint") from None
        raise
    return out


# ---- loading


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


def _json(data: bytes, path: Path) -> dict:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); {_REEXPORT}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds {type(value).__name__}, where a JSON object was expected; {_REEXPORT}")
    return value


def _read_plan(folder: Path, manifest: Manifest) -> Plan:
    """The folder's plan, from the bytes whose digest was checked (never read a second time)."""
    path = folder / manifest.plan
    data = read_verified(folder, manifest, manifest.plan)
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"cannot read the plan {path} ({str(e).splitlines()[0]}); {_REEXPORT}") from None
    return Plan.from_dict(raw, source=f"plan {path}")


def _read_by_load_denoiser(manifest: Manifest) -> set[str]:
    return {manifest.plan, manifest.config, manifest.tensors_file}


def read_index(folder) -> dict:
    """An exported folder's ``model_index.json``, checked against the manifest's digest."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    return _json(read_verified(folder, manifest, "model_index.json"), folder / "model_index.json")


def _build_meta(folder: Path) -> tuple[torch.nn.Module, Plan, Manifest]:
    """The exported denoiser on the meta device (unquantized, from its checked config), its plan and manifest."""
    import diffusers

    manifest = read_manifest(folder)
    check_files(folder, manifest)
    plan = _read_plan(folder, manifest)
    config_path = folder / manifest.config
    denoiser_config = _json(read_verified(folder, manifest, manifest.config), config_path)
    cls = getattr(diffusers, str(denoiser_config.get("_class_name")), None)
    if cls is None or cls.__name__ != manifest.denoiser_class:
        raise CheckpointError(f"{config_path} names {denoiser_config.get('_class_name')!r}, the manifest "
                              f"{manifest.denoiser_class!r}; {_REEXPORT}")
    with torch.device("meta"):
        model = cls.from_config(denoiser_config)
    info = describe(model)
    fingerprint = info.fingerprint
    if plan.fingerprint != fingerprint or manifest.fingerprint != fingerprint:
        raise CheckpointError(f"the plan's fingerprint {plan.fingerprint} does not match the denoiser its config "
                              f"describes ({fingerprint}); the folder mixes two models, {_REEXPORT}")
    try:  # its layers too: a forged plan and manifest must not reach the install as a KeyError
        plan.check_model(info)
    except PlanError as e:
        raise CheckpointError(f"the plan {folder / manifest.plan} does not fit the denoiser its config describes "
                              f"({str(e).partition(';')[0]}); {_REEXPORT}") from None
    return model, plan, manifest


def meta_denoiser(folder) -> torch.nn.Module:
    """An exported folder's denoiser as it was before quantization, on the meta device (no tensor file read),
    checked against the folder's manifest and plan; for describing it (``inspect``)."""
    model, _, manifest = _build_meta(Path(folder).expanduser())
    dtypes = {name: rec["dtype"] for name, rec in manifest.tensors.items()}  # the saved dtypes, not the default
    dtypes.update({f"{name}.weight": rec.dtype for name, rec in manifest.layers.items()})
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        dtype = getattr(torch, str(dtypes.get(name, "")), None)
        if isinstance(dtype, torch.dtype) and dtype != t.dtype:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            moved = torch.empty_like(t, dtype=dtype, device="meta")
            setattr(owner, attr, torch.nn.Parameter(moved, t.requires_grad) if isinstance(t, torch.nn.Parameter)
                    else moved)
    return model.eval()


def load_denoiser(folder, device=None) -> tuple[torch.nn.Module, Plan]:
    """The planned denoiser of an exported folder and its plan, built without full-precision weights.

    The denoiser is built on the meta device from its config; the packed and remaining tensors are read
    straight onto ``device`` (default CPU); the plan's activation windows and feature cache are installed.
    Raises CheckpointError (one line) for a missing, truncated or tampered file, a path out of the folder, a
    damaged manifest or a plan that does not match.
    """
    folder = Path(folder).expanduser()
    device = torch.device(device or "cpu")
    model, plan, manifest = _build_meta(folder)
    tensors = read_tensors(inside(folder, manifest.tensors_file), device, file_bytes=manifest.file_bytes,
                           digest=manifest.files[manifest.tensors_file].digest, expected=manifest.tensors,
                           error=CheckpointError, fix=f"copy the folder again or {_REEXPORT}",
                           desc="loading packed denoiser")

    packed = {}
    quantized = {n for n, f in plan.layers.items() if f != "fp"}
    if quantized != set(manifest.layers):
        raise CheckpointError(f"the manifest's packed layers are not the plan's quantized layers; {_REEXPORT}")
    for name, rec in manifest.layers.items():
        if rec.format != plan.layers[name]:
            raise CheckpointError(f"layer {name!r} is packed as {rec.format!r}, the plan says "
                                  f"{plan.layers[name]!r}; {_REEXPORT}")
        try:
            packed[name] = Packed(rec.format, rec.shape, getattr(torch, rec.dtype),
                                  {key: tensors.pop(tname) for key, tname in rec.tensors.items()})
        except (KeyError, TypeError):  # two layers name one tensor, or Packed refuses the record
            raise CheckpointError(f"the manifest's record of layer {name!r} is damaged; {_REEXPORT}") from None
    # the plan's quantized modules, step state (held for the loaded model's lifetime) and feature cache
    install(model, plan, packed)
    for name, t in tensors.items():
        _assign(model, name, t)
    for alias, target in manifest.aliases.items():
        owner_name, _, attr = target.rpartition(".")
        _assign(model, alias, getattr(model.get_submodule(owner_name) if owner_name else model, attr))
    left = _meta_left(model)
    if left:
        raise CheckpointError(f"the checkpoint does not hold {', '.join(left[:3])} (and {max(len(left) - 3, 0)} "
                              f"more) of the denoiser; {_REEXPORT}")
    model.eval()
    if measured_bytes(model) != manifest.bytes:
        raise CheckpointError(f"the loaded denoiser holds {measured_bytes(model):,} B, the manifest says "
                              f"{manifest.bytes:,} B; {_REEXPORT}")
    return model, plan


def load_quantized(folder, device=None, *, pipeline_class=None, **from_pretrained_kwargs):
    """The pipeline of an exported folder: its denoiser from :func:`load_denoiser` (no full-precision weights),
    the other components with ``pipeline_class.from_pretrained`` (default ``diffusers.DiffusionPipeline``)."""
    from diffusers import DiffusionPipeline

    folder = Path(folder).expanduser()
    denoiser, _ = load_denoiser(folder, device)
    manifest = read_manifest(folder)
    check_files(folder, manifest)  # again: what diffusers reads now is what the manifest lists, and nothing else
    verify_files(folder, manifest, [n for n in manifest.files if n not in _read_by_load_denoiser(manifest)])
    component = manifest.component
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


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "CheckpointError",
    "Manifest",
    "export",
    "is_checkpoint",
    "load_denoiser",
    "load_quantized",
    "meta_denoiser",
    "read_index",
    "read_manifest",
]
