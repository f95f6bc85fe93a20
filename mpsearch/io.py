"""Atomic file writes and safe YAML: a file is either wholly written or not there at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from mpsearch.errors import MpsearchError


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MpsearchError(f"cannot write {path}: {e.strerror or e}; choose a writable output path") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise MpsearchError(f"cannot write {path}: {e.strerror or e}; choose a writable output path") from None
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def staging_folder(out, error=MpsearchError, fix: str = "choose a writable output folder") -> Path:
    """A new empty folder beside ``out`` to write a whole folder into before renaming it into place; an
    ``error`` naming ``out`` and ``fix`` when it cannot be made."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise error(f"cannot write {out}: {e.strerror or e}; {fix}") from None


def dump_yaml(data) -> str:
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
    if yaml.safe_load(text) != data:
        # some characters (U+0085, U+2028, ...) are written raw but read back as line breaks: escape them all
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=False, width=120)
    return text


def load_yaml(path, what: str = "file", error=MpsearchError):
    """Read YAML with safe loading only; errors name the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {path}: {e}; check the path and permissions") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{what} {path} is not valid YAML{where} ({problem}); fix or regenerate it") from None
