"""The profile file on disk: one writer at a time (a lock file beside it), file modes, removal.

A writer holds ``<profile>.lock``: a file holding its pid, host and start time, on which it holds an exclusive
``fcntl.flock``. The operating system drops the flock when the process dies however it dies (SIGKILL, a
crash), so a lock left by a dead writer is taken over by the next one; where flock is unavailable (some network
filesystems) a lock whose pid is dead on this host is taken over instead. A second writer gets a
:class:`ProfileBusyError` naming the owner. Within one thread the lock is re-entrant (a merge that replaces a
file its caller locked); another thread of the same process is a second writer like any other.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import threading
import time
from pathlib import Path

from mpsearch.errors import ProfileError
from mpsearch.io import process_alive

try:
    import fcntl
except ImportError:  # not POSIX: the pid in the lock file is all there is
    fcntl = None  # type: ignore[assignment]

__all__ = ["ProfileBusyError", "WriterLock", "default_profile_path", "lock_path", "remove_profile_file", "writer_lock"]


class ProfileBusyError(ProfileError):
    """Another process is writing the profile file (the message names its pid and host)."""


def default_profile_path(model: str = "default") -> Path:
    """Where a profile of ``model`` (a name or a folder) goes when no file is named: ``profiles/<name>.sqlite``."""
    slug = Path(str(model)).name or "model"
    return Path("profiles") / f"{slug}.sqlite"


def lock_path(path) -> Path:
    """The lock file of the profile file ``path``: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def remove_profile_file(path) -> None:
    """Delete a profile file and its SQLite journal, if there (used when a fresh profile fails to start)."""
    for p in (Path(path), Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if p.is_file():
                p.unlink()
        except OSError:
            pass


class WriterLock:
    """The lock on one profile file, held by this process (see :func:`writer_lock`)."""

    def __init__(self, profile, fd: int, key: tuple[str, int]):
        self.profile, self.path, self._fd, self._key, self._count = Path(profile), lock_path(profile), fd, key, 1

    def release(self) -> None:
        """Give the lock up (the last release of a re-entrant lock removes the lock file)."""
        with _HELD_GUARD:
            self._count -= 1
            if self._count > 0 or self._fd < 0:
                return
            _HELD.pop(self._key, None)
            try:
                if _same_file(self.path, self._fd):
                    self.path.unlink()
            except OSError:
                pass
            os.close(self._fd)  # drops the flock
            self._fd = -1

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[tuple[str, int], tuple[int, WriterLock]] = {}  # (lock path, thread) -> (pid, lock) held here
_HELD_GUARD = threading.RLock()


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def _busy(profile: Path, owner: dict) -> ProfileBusyError:
    who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
    since = f", since {owner['since']}" if owner.get("since") else ""
    return ProfileBusyError(f"{profile} is being written by another mpsearch process ({who}{since}); wait for it to "
                            f"finish, or profile in parallel with --shard i/n into separate --out files and merge them "
                            f"(lock file {lock_path(profile)})")


def writer_lock(profile) -> WriterLock:
    """Take the writer's lock of the profile file ``profile`` (its folder must exist), or raise a
    :class:`ProfileBusyError` naming the process that holds it. Release it with ``.release()`` (or ``with``)."""
    profile = Path(profile)
    path = lock_path(profile)
    key = (str(path.resolve()), threading.get_ident())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] == os.getpid() and held[1]._fd >= 0:
            held[1]._count += 1
            return held[1]
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise ProfileError(f"cannot create the lock file {path}: {e.strerror or e}; choose a writable --out") \
                    from None
            try:
                if not _take(fd, profile):
                    continue  # the file was replaced or removed under us: try again on the new one
            except BaseException:
                os.close(fd)
                raise
            lock = WriterLock(profile, fd, key)
            _HELD[key] = (os.getpid(), lock)
            return lock
        raise ProfileError(f"cannot take the lock file {path}: it keeps changing; check for other writers")


def _take(fd: int, profile: Path) -> bool:
    """Lock ``fd`` (the lock file just opened) and write this process into it; False if the path no longer names
    that file (a releasing owner removed it: the caller opens the new one)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                owner = _owner(fd)
                for _ in range(20):  # the owner writes itself in just after locking
                    if owner:
                        break
                    time.sleep(0.05)
                    owner = _owner(fd)
                raise _busy(profile, owner) from None
            locked = False  # flock unsupported here: fall back to the pid
    else:
        locked = False
    if not _same_file(lock_path(profile), fd):
        os.close(fd)
        return False
    owner = _owner(fd)
    if not locked and owner.get("pid") not in (None, os.getpid()) and \
            (owner.get("host") != socket.gethostname() or process_alive(owner["pid"])):
        raise _busy(profile, owner)
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())
    return True
