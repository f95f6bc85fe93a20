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


class _Dumper(yaml.SafeDumper):
    """Safe dumping that writes every value out in full: no anchors or aliases (mpsearch refuses them on load)."""

    def ignore_aliases(self, data) -> bool:
        return True


class _Refused(yaml.YAMLError):
    """Valid YAML that mpsearch refuses to read: ``problem`` says what, ``mark`` where."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _Loader(yaml.SafeLoader):
    """Safe loading that refuses anchors, aliases and duplicate keys: an alias can expand a small file into
    gigabytes ("billion laughs"), and a duplicate key silently drops the first value."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused("uses a YAML anchor or alias (&name / *name), which mpsearch does not read (one can "
                           "expand a small file into gigabytes); write each value out in full", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise _Refused(f"has the duplicate key {key!r}, which would silently replace the first; "
                                   "keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def dump_yaml(data) -> str:
    """``data`` as safe YAML, keys in their order, every value written out in full (no anchors or aliases)."""
    kw = {"Dumper": _Dumper, "sort_keys": False, "default_flow_style": False, "width": 120}
    text = yaml.dump(data, allow_unicode=True, **kw)
    if yaml.safe_load(text) != data:
        # some characters (U+0085, U+2028, ...) are written raw but read back as line breaks: escape them all
        text = yaml.dump(data, allow_unicode=False, **kw)
    return text


def load_yaml(path, what: str = "file", error=MpsearchError):
    """Read YAML with safe loading only, refusing anchors, aliases and duplicate keys; errors name the file and
    the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {path}: {e}; check the path and permissions") from None
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except _Refused as e:
        raise error(f"{what} {path} {e.problem} (line {e.mark.line + 1})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{what} {path} is not valid YAML{where} ({problem}); fix or regenerate it") from None
