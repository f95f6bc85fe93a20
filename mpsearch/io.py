"""Atomic file writes and safe YAML: a file is either wholly written or not there at all.

Whatever is written gets the user's umask (``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders),
although the temporary files and folders it passes through are created private (mkstemp/mkdtemp)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

from mpsearch.errors import MpsearchError

#: a file-system path as the functions here take it
StrPath = str | os.PathLike[str]


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def apply_umask(target: StrPath | int, *, folder: bool = False) -> None:
    """Give ``target`` (a path or an open file descriptor) the mode a plain ``open``/``mkdir`` would have given
    it: ``0o666 & ~umask`` (``0o777`` for a ``folder``). For files made by ``tempfile.mkstemp``/``mkdtemp``."""
    mode = (0o777 if folder else 0o666) & ~current_umask()
    if isinstance(target, int):
        os.fchmod(target, mode)
    else:
        os.chmod(target, mode)


def apply_umask_tree(folder: StrPath) -> None:
    """:func:`apply_umask` on ``folder`` and everything under it (symlinks left alone): for a staging folder
    that libraries wrote into with their own modes (safetensors writes 0600)."""
    apply_umask(folder, folder=True)
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                apply_umask(path, folder=name in dirnames)


def atomic_write_bytes(path: StrPath, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename; the file
    gets the user's umask."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MpsearchError(f"cannot write {path}: {e.strerror or e}; choose a writable output path") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            apply_umask(fh.fileno())
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


def atomic_write_text(path: StrPath, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# staging folders are named ".<out>.staging-<pid>@<host>.<random>.tmp" (".old" for a replaced folder on its
# way out), so a later writer into the same parent can tell one whose process died and remove it
_STAGING = re.compile(r"^\..+\.staging-(?P<pid>[0-9]+)@(?P<host>[A-Za-z0-9-]*)\.[A-Za-z0-9_]+\.(?:tmp|old)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64]


def process_alive(pid: object) -> bool:
    """Whether process ``pid`` (as read from a file name or a lock file: anything) may be running on this machine:
    False for no valid pid or no such process; True when it runs, or when that cannot be told (another user's
    process), so a caller never removes what a live process may own."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process (PermissionError), or one that cannot be tested: keep what it owns
    return True


def remove_stale_staging(parent: StrPath) -> list[Path]:
    """Remove the staging folders in ``parent`` left by a writer on this machine whose process is gone (killed
    mid-write); folders of live processes, of other machines and anything else are kept. Returns those removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    host = _host()
    for entry in entries:
        m = _STAGING.match(entry.name)
        if m is None or m["host"] != host or not entry.is_dir(follow_symlinks=False) or process_alive(int(m["pid"])):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def staging_folder(out: StrPath, error: type[MpsearchError] = MpsearchError,
                   fix: str = "choose a writable output folder", *,
                   suffix: str = ".tmp") -> Path:
    """A new empty folder beside ``out`` (with the user's umask) to write a whole folder into before renaming
    it into place; an ``error`` naming ``out`` and ``fix`` when it cannot be made. Its name carries this
    process's id, and stale staging folders of dead processes beside it are removed first."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}@{_host()}.", suffix=suffix,
                                    dir=out.parent))
        apply_umask(tmp, folder=True)
        return tmp
    except OSError as e:
        raise error(f"cannot write {out}: {e.strerror or e}; {fix}") from None


def replace_folder(tmp: StrPath, out: StrPath, error: type[MpsearchError] = MpsearchError) -> None:
    """Move the finished staging folder ``tmp`` to ``out``, replacing an older folder there as a whole: the older
    one is first moved into a staging folder of this process (so a kill leaves nothing the next run cannot
    remove) and put back if the move fails."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = staging_folder(out, error, suffix=".old")
        os.replace(out, old / "folder")
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:  # put the older folder back
            os.replace(old / "folder", out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _Dumper(yaml.SafeDumper):
    """Safe dumping that writes every value out in full: no anchors or aliases (mpsearch refuses them on load)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _Refused(yaml.YAMLError):
    """Valid YAML that mpsearch refuses to read: ``problem`` says what, ``mark`` where."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _Loader(yaml.SafeLoader):
    """Safe loading that refuses anchors, aliases and duplicate keys: an alias can expand a small file into
    gigabytes ("billion laughs"), and a duplicate key silently drops the first value."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused("uses a YAML anchor or alias (&name / *name), which mpsearch does not read (one can "
                           "expand a small file into gigabytes); write each value out in full", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
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


def dump_yaml(data: Any) -> str:
    """``data`` as safe YAML, keys in their order, every value written out in full (no anchors or aliases)."""
    kw: dict[str, Any] = {"Dumper": _Dumper, "sort_keys": False, "default_flow_style": False, "width": 120}
    text = yaml.dump(data, allow_unicode=True, **kw)
    if yaml.safe_load(text) != data:
        # some characters (U+0085, U+2028, ...) are written raw but read back as line breaks: escape them all
        text = yaml.dump(data, allow_unicode=False, **kw)
    return text


#: the most bytes mpsearch reads from one YAML file: a plan is a few hundred KB even for the largest models, so
#: a larger file is a wrong path (a checkpoint, a log) or a damaged file, refused before it is read
MAX_YAML_BYTES = 16 * 2**20


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular_text(path: StrPath, what: str = "file", error: type[MpsearchError] = MpsearchError, *,
                      max_bytes: int = MAX_YAML_BYTES, fix: str = "check the path") -> str:
    """The UTF-8 text of the regular file ``path``, read with a bounded read: a folder, a device (/dev/zero), a
    pipe, a file over ``max_bytes`` or one that is not UTF-8 is a one-line ``error`` naming ``what``, refused
    before anything large is read (a pipe is never waited on)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"cannot read {what} {path}: it does not exist; {fix}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}; {fix} and permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is {_kind(st.st_mode)}, expected a regular file; {fix}")
        if st.st_size > max_bytes:
            raise error(f"{what} {path} is {st.st_size:,} bytes, more than the {max_bytes:,} bytes mpsearch reads "
                        f"from such a file, so it is the wrong file or damaged; {fix}")
        chunks, left = [], max_bytes + 1
        while left > 0:  # the file may grow after fstat: never read more than max_bytes + 1
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}; {fix} and permissions") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise error(f"{what} {path} holds more than the {max_bytes:,} bytes mpsearch reads from such a file, so it "
                    f"is the wrong file or damaged; {fix}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start:,}); {fix}") from None


def _safe_data(text: str) -> Any:
    """The one document of ``text``, parsed by :class:`_Loader` (a SafeLoader that refuses anchors, aliases and
    duplicate keys)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: StrPath, what: str = "file", error: type[MpsearchError] = MpsearchError, *,
              max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Read YAML with safe loading only, refusing anchors, aliases and duplicate keys, and anything but a regular
    file of at most ``max_bytes`` (read with a bounded read); errors name the file and the line."""
    path = Path(path)
    text = read_regular_text(path, what, error, max_bytes=max_bytes, fix=f"give the path of a {what} (YAML)")
    try:
        return _safe_data(text)
    except _Refused as e:
        raise error(f"{what} {path} {e.problem} (line {e.mark.line + 1})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{what} {path} is not valid YAML{where} ({problem}); fix or regenerate it") from None
