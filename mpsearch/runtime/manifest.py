"""The manifest of a quantized checkpoint folder, parsed once into a typed record, and the checks of the folder
against it.

The manifest (``mpsearch-checkpoint.json``) records the size and BLAKE3 digest of every file the loader reads
(``model_index.json``, every component's config and weights, the packed tensors, the plan). A folder is
accepted only when every path the manifest names is a plain relative name that resolves (symlinks included)
to a regular file inside the folder, no other file is there, and each file's size and digest match.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import torch

from mpsearch.errors import ModelError
from mpsearch.runtime.tensorfile import DTYPES, HASHERS, blake3_file, digest_bytes, dtype_name, open_regular

FORMAT_VERSION = 2  # 2: every file the loader reads has a BLAKE3 digest under "files"
MANIFEST = "mpsearch-checkpoint.json"
KIND = "mpsearch-checkpoint"
REEXPORT = "re-export it with `mpsearch export --model M --plan P --out DIR`"
_DIGEST = re.compile(r"^blake3:[0-9a-f]{64}$")
_TENSOR_DTYPES = {dtype_name(d) for d in DTYPES.values()}
_COMPONENTS = ("transformer", "unet")


class CheckpointError(ModelError):
    """A quantized checkpoint folder is incomplete, tampered with, or does not match its plan."""


@dataclass(frozen=True)
class FileRecord:
    """What one file of the folder must be: its size in bytes and ``"blake3:<hex>"`` digest."""

    bytes: int
    digest: str


@dataclass(frozen=True)
class LayerRecord:
    """A quantized layer: its format, its weight's shape and dtype, and its packed tensors' names in the file."""

    format: str
    shape: tuple[int, ...]
    dtype: str
    tensors: dict[str, str]


@dataclass(frozen=True)
class Manifest:
    """The checked content of a manifest (see the module docstring); paths are relative to the folder."""

    component: str
    denoiser_class: str
    fingerprint: str
    bytes: int
    plan: str
    tensors_file: str
    files: dict[str, FileRecord]
    tensors: dict[str, dict]
    layers: dict[str, LayerRecord]
    aliases: dict[str, str]

    @property
    def config(self) -> str:
        """The denoiser's config file."""
        return f"{self.component}/config.json"

    @property
    def file_bytes(self) -> int:
        """The size of the packed tensor file."""
        return self.files[self.tensors_file].bytes

    def to_dict(self) -> dict:
        """The JSON form written to the folder."""
        data = asdict(self)
        for rec in data["layers"].values():
            rec["shape"] = list(rec["shape"])
        return {"format": KIND, "format_version": FORMAT_VERSION, **data}


# ---- parsing


def _damaged(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} {what}; the checkpoint is damaged, {REEXPORT}")


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _relative(path, key: str, value) -> str:
    """``value`` if it is a plain relative path ("a/b.json": no absolute path, no "..", ".", "\\" or empty
    part), else a CheckpointError."""
    if not isinstance(value, str) or not value:
        raise _damaged(path, f"names {key} as {_short(value)}, where a relative file name was expected")
    parts = value.split("/")
    if value.startswith("/") or "\\" in value or "\0" in value or any(p in ("", ".", "..") for p in parts) \
            or PurePosixPath(value).is_absolute() or re.match(r"^[A-Za-z]:", value):
        raise CheckpointError(f"{path} names {key} as {_short(value)}; a checkpoint's files must be plain relative "
                              f"names inside its folder (no absolute path, no '..'): {REEXPORT}")
    return value


def _mapping(path, key: str, value) -> dict:
    if not isinstance(value, dict):
        raise _damaged(path, f"has {key} as {type(value).__name__} {_short(value)}, where a mapping was expected")
    return value


def _shape(path, key: str, value) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(d) and d >= 0 for d in value):
        raise _damaged(path, f"has {key} as {_short(value)}, where a list of sizes >= 0 was expected")
    return tuple(value)


def _str(path, key: str, value) -> str:
    if not isinstance(value, str):
        raise _damaged(path, f"has {key} as {_short(value)}, where a string was expected")
    return value


def _record(path, key: str, value, keys: tuple[str, ...]) -> dict:
    value = _mapping(path, key, value)
    if set(value) != set(keys):
        raise _damaged(path, f"has {key} with keys {sorted(value)}, where exactly {list(keys)} were expected")
    return value


_TOP = ("format", "format_version", "component", "denoiser_class", "fingerprint", "bytes", "plan", "tensors_file",
        "files", "tensors", "layers", "aliases")


def parse_manifest(data, path) -> Manifest:
    """The :class:`Manifest` of a manifest's JSON ``data`` read from ``path``, every field checked (its
    format and version first); CheckpointError (one line) otherwise."""
    if not isinstance(data, dict) or data.get("format") != KIND:
        raise CheckpointError(f"{path} is not an mpsearch checkpoint manifest; {REEXPORT}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _damaged(path, f"has format_version {_short(version)}, where a whole number was expected")
    if version < FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}, which this mpsearch no longer "
                              f"reads (it reads version {FORMAT_VERSION}, whose manifest covers every file); "
                              f"{REEXPORT}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}; this mpsearch reads version "
                              f"{FORMAT_VERSION}: upgrade mpsearch or {REEXPORT}")
    missing, unknown = [k for k in _TOP if k not in data], sorted(set(data) - set(_TOP))
    if missing or unknown:
        raise _damaged(path, f"lacks {', '.join(missing)}" if missing else f"has unknown keys {', '.join(unknown)}")
    component = data["component"]
    if not isinstance(component, str) or component not in _COMPONENTS:
        raise _damaged(path, f"has component {_short(component)}, where one of {', '.join(_COMPONENTS)} was expected")
    nbytes = data["bytes"]
    if not _is_int(nbytes) or nbytes < 0:
        raise _damaged(path, f"has bytes {_short(nbytes)}, where a byte count was expected")
    plan, tensors_file = _relative(path, "plan", data["plan"]), _relative(path, "tensors_file", data["tensors_file"])
    files = {}
    for name, rec in _mapping(path, "files", data["files"]).items():
        _relative(path, f"files[{name!r}]", name)
        rec = _record(path, f"files[{name!r}]", rec, ("bytes", "digest"))
        if not _is_int(rec["bytes"]) or rec["bytes"] < 0:
            raise _damaged(path, f"has files[{name!r}].bytes {_short(rec['bytes'])}, where a byte count was expected")
        if not isinstance(rec["digest"], str) or not _DIGEST.match(rec["digest"]):
            raise _damaged(path, f"has files[{name!r}].digest {_short(rec['digest'])}, where 'blake3:<64 hex digits>' "
                                 f"was expected")
        files[name] = FileRecord(rec["bytes"], rec["digest"])
    tensors = {}
    for name, rec in _mapping(path, "tensors", data["tensors"]).items():
        rec = _record(path, f"tensors[{name!r}]", rec, ("shape", "dtype"))
        shape = _shape(path, f"tensors[{name!r}].shape", rec["shape"])
        if not isinstance(rec["dtype"], str) or rec["dtype"] not in _TENSOR_DTYPES:
            raise _damaged(path, f"has tensors[{name!r}].dtype {_short(rec['dtype'])}, where one of "
                                 f"{', '.join(sorted(_TENSOR_DTYPES))} was expected")
        tensors[name] = {"shape": list(shape), "dtype": rec["dtype"]}
    layers = {}
    for name, rec in _mapping(path, "layers", data["layers"]).items():
        where = f"layers[{name!r}]"
        rec = _record(path, where, rec, ("format", "shape", "dtype", "tensors"))
        dtype = _str(path, f"{where}.dtype", rec["dtype"])
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise _damaged(path, f"has {where}.dtype {dtype!r}, where a torch dtype name was expected")
        keys = _mapping(path, f"{where}.tensors", rec["tensors"])
        for key, tname in keys.items():
            if not isinstance(tname, str) or tname not in tensors:
                raise _damaged(path, f"has {where}.tensors[{key!r}] = {_short(tname)}, which names no tensor it lists")
        layers[name] = LayerRecord(_str(path, f"{where}.format", rec["format"]),
                                   _shape(path, f"{where}.shape", rec["shape"]), dtype, dict(keys))
    aliases = _mapping(path, "aliases", data["aliases"])
    if not all(isinstance(k, str) and isinstance(v, str) and v in tensors for k, v in aliases.items()):
        raise _damaged(path, "has aliases whose targets are not tensors it lists")
    manifest = Manifest(component=component, denoiser_class=_str(path, "denoiser_class", data["denoiser_class"]),
                        fingerprint=_str(path, "fingerprint", data["fingerprint"]), bytes=nbytes,
                        plan=plan, tensors_file=tensors_file, files=files,
                        tensors=tensors, layers=layers, aliases=dict(aliases))
    for key, name in (("plan", manifest.plan), ("tensors_file", manifest.tensors_file),
                      ("the denoiser config", manifest.config), ("the pipeline index", "model_index.json")):
        if name not in files:
            raise _damaged(path, f"records no size and digest for {key} {name!r}")
    return manifest


def read_manifest(folder) -> Manifest:
    """The checked :class:`Manifest` of an exported folder (CheckpointError, one line, if there is none or it
    is of another format version or damaged)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not os.path.lexists(path):
        raise CheckpointError(f"{folder} has no {MANIFEST}, so it is not an mpsearch checkpoint; {REEXPORT}")
    try:
        with open_regular(inside(folder, MANIFEST), str(path), CheckpointError, REEXPORT) as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); the checkpoint is damaged, {REEXPORT}") from None
    return parse_manifest(data, path)


# ---- the folder against its manifest


def inside(folder, name: str) -> Path:
    """``folder/name`` with every symlink resolved, checked to lie inside ``folder`` (CheckpointError if not)."""
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise CheckpointError(f"{Path(folder) / name} resolves to {target}, outside the checkpoint folder {folder}; "
                              f"a checkpoint's files must lie inside its folder: {REEXPORT}")
    return target


def check_files(folder, manifest: Manifest) -> None:
    """Every file the manifest lists is inside ``folder``, a regular file of its recorded size, and no other
    file is there (the loader could read it); digests are checked as each file is read."""
    folder = Path(folder)
    for name, rec in manifest.files.items():
        target = inside(folder, name)
        what = f"{folder / name}"
        try:
            st = os.stat(target)
        except FileNotFoundError:
            raise CheckpointError(f"{what} is missing; the checkpoint is incomplete, {REEXPORT}") from None
        except OSError as e:
            raise CheckpointError(f"cannot read {what} ({e.strerror or e}); {REEXPORT}") from None
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f"{what} is a folder where a file was written; {REEXPORT}")
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{what} is not a regular file; {REEXPORT}")
        if st.st_size != rec.bytes:
            raise CheckpointError(f"{what} has {st.st_size:,} bytes where {rec.bytes:,} were written (its size and "
                                  f"digest are in {MANIFEST}); it is truncated or replaced: {REEXPORT}")
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = Path(dirpath, entry).relative_to(root).as_posix()
            if rel != MANIFEST and rel not in manifest.files:
                raise CheckpointError(f"{folder / rel} is not one of the files export wrote (the manifest lists "
                                      f"none such, and the loader could read it); remove it or {REEXPORT}")


def _mismatch(folder, name: str) -> CheckpointError:
    return CheckpointError(f"{Path(folder) / name} does not match its digest in {MANIFEST} (changed after export); "
                           f"{REEXPORT}")


def read_verified(folder, manifest: Manifest, name: str) -> bytes:
    """The bytes of the listed file ``name``, read once and checked against its recorded size and digest."""
    rec = manifest.files[name]
    with open_regular(inside(folder, name), str(Path(folder) / name), CheckpointError, REEXPORT) as fh:
        data = fh.read(rec.bytes + 1)
    if len(data) != rec.bytes or digest_bytes(data) != rec.digest:
        raise _mismatch(folder, name)
    return data


def verify_files(folder, manifest: Manifest, names) -> None:
    """Check each listed file of ``names`` against its recorded size and digest (read in 4 MiB chunks)."""
    for name in names:
        rec = manifest.files[name]
        h, n = HASHERS["blake3"](), 0
        with open_regular(inside(folder, name), str(Path(folder) / name), CheckpointError, REEXPORT) as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
                n += len(chunk)
        if n != rec.bytes or "blake3:" + h.hexdigest() != rec.digest:
            raise _mismatch(folder, name)


def record_files(folder) -> dict[str, FileRecord]:
    """The size and digest of every file under ``folder`` (but the manifest), keyed by relative path."""
    root = Path(folder)
    files = {}
    for dirpath, _, filenames in os.walk(root):
        for entry in filenames:
            path = Path(dirpath, entry)
            rel = path.relative_to(root).as_posix()
            if rel != MANIFEST:
                files[rel] = FileRecord(path.stat().st_size, blake3_file(path))
    return dict(sorted(files.items()))


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "CheckpointError",
    "FileRecord",
    "LayerRecord",
    "Manifest",
    "check_files",
    "inside",
    "parse_manifest",
    "read_manifest",
    "read_verified",
    "record_files",
    "verify_files",
]
