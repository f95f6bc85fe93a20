"""Profiling on many processes and machines under ``torchrun`` or ``accelerate launch`` (torch.distributed).

A launch is detected from the environment that torchrun and accelerate set (``WORLD_SIZE`` > 1 with ``RANK``,
and ``LOCAL_RANK`` for the device), or from a process group the caller already initialized. Rank ``r`` of
``n`` profiles shard ``(r, n)`` (the units u with u % n == r, exactly as ``--shard r/n``) into its own file
next to the profile, ``<out>.shard<r>-of-<n>``; once every rank has finished, rank 0 gathers the shard files
(their bytes travel through torch.distributed, so the machines need not share a filesystem) and merges them
into ``out`` atomically with :func:`~mpsearch.profiling.store.merge_profiles`, so ``out`` holds what one
process would have written. The shard files are removed only after that merge succeeded: an interrupted run
leaves them, and the same command resumes each rank's file (finished units are kept). An existing ``out``
counts too: its finished units are not measured again, and are merged with the new ones.

Coordination runs on a gloo group of its own (small CPU-side messages, whatever backend the default group
uses), whose timeout is long because a rank legitimately waits for the slowest shard. Every step that
several ranks wait on exchanges each rank's outcome, so a rank that fails makes every rank stop with a one-line
error naming it instead of waiting forever; a rank that dies outright (killed, out of memory) closes its
connections, and the others stop with an error saying so.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mpsearch.errors import MpsearchError, ProfileError, UsageError
from mpsearch.models import get_denoiser
from mpsearch.profiling.profiler import ProfileConfig, existing_units, record_units
from mpsearch.profiling.store import Profile, merge_profiles, remove_profile_file, writer_lock

__all__ = ["Launch", "Session", "detect_launch", "distributed_session", "launch_device", "profile_sharded",
           "shard_file", "WAIT_TIMEOUT"]

#: how long a rank waits for the others at one step (the slowest shard, a merge, an end-to-end tier on rank 0)
WAIT_TIMEOUT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Launch:
    """This process's place in a distributed launch: rank ``rank`` of ``world_size``; ``local_rank`` is its index
    on its machine (it picks the GPU), None when the launcher did not say."""

    rank: int
    world_size: int
    local_rank: int | None = None


def _env_int(environ, key: str) -> int | None:
    value = environ.get(key)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"the environment variable {key}={value!r} is not an integer; launch with torchrun or "
                         "accelerate launch, which set it") from None


def detect_launch(environ=None) -> Launch | None:
    """The distributed launch this process is part of, or None for a single process.

    From torchrun's / accelerate's environment (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``), or else from a
    default process group already initialized with more than one rank. ``WORLD_SIZE`` 1 is a single process.
    """
    environ = os.environ if environ is None else environ
    world, rank, local = (_env_int(environ, k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    if world is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if world is None or world == 1:
        return None
    if world < 1:
        raise UsageError(f"WORLD_SIZE={world} is not a number of processes; launch with torchrun or accelerate launch")
    if rank is None:
        raise UsageError(f"WORLD_SIZE={world} but RANK is not set, so this process does not know its shard; launch "
                         "with torchrun or accelerate launch (they set both), or unset WORLD_SIZE for one process")
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is outside WORLD_SIZE={world} (ranks are 0..{world - 1}); launch with torchrun "
                         "or accelerate launch, which set both")
    return Launch(rank, world, local)


def launch_device(launch: Launch | None, requested: str | None = None) -> torch.device:
    """The device a rank profiles on: ``cuda:LOCAL_RANK`` when asked for ``cuda`` (the default of a distributed
    launch on a machine with GPUs), else the CPU. A single process keeps ``requested`` (default: the CPU)."""
    if requested not in (None, "cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {requested!r}")
    if requested is None:
        requested = "cuda" if launch is not None and torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device here; install a CUDA build of torch, or pass "
                         "--device cpu")
    if launch is None:
        return torch.device("cuda")
    local = launch.local_rank if launch.local_rank is not None else launch.rank
    count = torch.cuda.device_count()
    if local >= count:
        raise UsageError(f"LOCAL_RANK {local} has no GPU: this machine shows {count} CUDA device(s); start at most "
                         f"{count} processes per machine (torchrun --nproc-per-node {count}), or pass --device cpu")
    return torch.device("cuda", local)


def shard_file(out, rank: int, world_size: int) -> Path:
    """The file rank ``rank`` of ``world_size`` profiles its shard into: ``<out>.shard<rank>-of-<world_size>``."""
    out = Path(out)
    return out.with_name(f"{out.name}.shard{rank}-of-{world_size}")


def _shard_files(out) -> list[tuple[Path, int, int]]:
    """(path, rank, world size) of the shard files of ``out`` in its folder (this machine's view)."""
    out = Path(out)
    pattern = re.compile(rf"{re.escape(out.name)}\.shard(\d+)-of-(\d+)")
    found = []
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and int(m.group(1)) < int(m.group(2)):
                found.append((p, int(m.group(1)), int(m.group(2))))
    return sorted(found, key=lambda t: (t[2], t[1]))


def _describe(e: BaseException) -> tuple[str, bool]:
    text = str(e) if isinstance(e, MpsearchError) else f"{type(e).__name__}: {e}"
    return (text.strip().splitlines() or [type(e).__name__])[0], isinstance(e, UsageError)


class Session:
    """One distributed launch, joined: rank, world size, the coordination group. Use :func:`distributed_session`."""

    def __init__(self, launch: Launch, device=None, timeout: datetime.timedelta = WAIT_TIMEOUT):
        self.launch = launch
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.timeout = timeout
        self.created = False
        self.group = None

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0

    def start(self) -> Session:
        dist = torch.distributed
        if not dist.is_available():
            raise UsageError("this torch build has no torch.distributed, so it cannot profile under torchrun; install "
                             "a torch build with it, or run one process (--shard i/n splits work by hand)")
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            try:
                dist.init_process_group(backend=backend)
            except (RuntimeError, ValueError) as e:
                raise ProfileError(f"rank {self.rank} of {self.world_size} could not join the other processes "
                                   f"({_describe(e)[0]}); launch with torchrun or accelerate launch, which set "
                                   "MASTER_ADDR and MASTER_PORT") from None
            self.created = True
        if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
            raise UsageError(f"the environment says rank {self.rank} of {self.world_size}, but the process group is "
                             f"rank {dist.get_rank()} of {dist.get_world_size()}; launch with torchrun or accelerate "
                             "launch without overriding RANK or WORLD_SIZE")
        try:
            self.group = dist.new_group(backend="gloo", timeout=self.timeout)
        except RuntimeError as e:
            self.close()
            raise ProfileError(f"rank {self.rank} of {self.world_size} could not set up a gloo group to coordinate "
                               f"the shards ({_describe(e)[0]}); check that the ranks can reach each other") from None
        return self

    def close(self) -> None:
        dist = torch.distributed
        if self.group is not None and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group(self.group)
        self.group = None
        if self.created and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        self.created = False

    # ------------------------------------------------------------------ collectives with outcomes

    def _collective(self, what: str, fn):
        try:
            return fn()
        except MpsearchError:
            raise
        except Exception as e:  # noqa: BLE001 - gloo raises RuntimeError/DistError when a peer dies or times out
            raise ProfileError(f"rank {self.rank} of {self.world_size} lost the other ranks while {what} ("
                               f"{_describe(e)[0][:200]}); one of them stopped (see its error) or took longer than "
                               f"{self.timeout}; rerun the same command to resume: finished units are kept") from None

    def _raise_failures(self, outcomes: list, own: BaseException | None) -> None:
        failed = [(r, o) for r, o in enumerate(outcomes) if o[0] == "error"]
        if not failed:
            return
        if own is not None:
            raise own
        r, (_, text, usage) = failed[0]
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise (UsageError if usage else ProfileError)(f"rank {r} of {self.world_size} failed{others}: {text}")

    def exchange(self, fn, *, what: str, notify: bool = False) -> list:
        """Every rank runs ``fn()``; returns every rank's result, in rank order. If any rank's ``fn`` raised, every
        rank raises: that rank its own error, the others one naming it. ``notify``: a failing rank says so on
        stderr at once (the others may still be busy for a long time)."""
        own = None
        try:
            outcome = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - sent to the other ranks, then raised here
            own = e
            outcome = ("error", *_describe(e))
            if notify:
                print(f"mpsearch: rank {self.rank} of {self.world_size} failed: {outcome[1]} (waiting for the other "
                      "ranks to finish their shards; their finished units are kept)", file=sys.stderr, flush=True)
        outcomes = [None] * self.world_size
        self._collective(what, lambda: torch.distributed.all_gather_object(outcomes, outcome, group=self.group))
        self._raise_failures(outcomes, own)
        return [o[1] for o in outcomes]

    def on_main(self, fn, *, what: str):
        """Rank 0 runs ``fn()`` while the others wait; its result (or its error) comes back on every rank."""
        own = None
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except Exception as e:  # noqa: BLE001
                own = e
                outcome = ("error", *_describe(e))
        box = [outcome]
        self._collective(what, lambda: torch.distributed.broadcast_object_list(box, 0, group=self.group))
        self._raise_failures([box[0]], own)
        return box[0][1]

    def gather_to_main(self, obj, *, what: str) -> list | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the others."""
        gathered = [None] * self.world_size if self.is_main else None
        self._collective(what, lambda: torch.distributed.gather_object(obj, gathered, 0, group=self.group))
        return gathered


_ACTIVE: list[Session] = []


@contextlib.contextmanager
def distributed_session(device=None, *, launch: Launch | None = None, timeout: datetime.timedelta = WAIT_TIMEOUT):
    """The distributed session of this process: None for a single process; inside one already open, that one.

    Joins the launch (initializing the default process group if nobody did: gloo on the CPU, nccl when
    ``device`` is a GPU, which becomes the current CUDA device) and leaves it on exit, destroying only what it
    created."""
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    launch = launch if launch is not None else detect_launch()
    if launch is None:
        yield None
        return
    session = Session(launch, device, timeout).start()
    _ACTIVE.append(session)
    try:
        yield session
    finally:
        _ACTIVE.pop()
        session.close()


def pipeline_device(pipe) -> torch.device:
    """The device of ``pipe``'s denoiser (its first parameter's; the CPU if it has none)."""
    for p in get_denoiser(pipe).parameters():
        return p.device
    return torch.device("cpu")


def _stale_shards(out, world: int) -> list[str]:
    return [p.name for p, _, n in _shard_files(out) if n != world]


def _stale_error(out, names: list[str], world: int) -> ProfileError:
    sizes = sorted({int(re.search(r"-of-(\d+)$", n).group(1)) for n in names})
    m = sizes[0]
    listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return ProfileError(f"{Path(out).parent} holds shard files of an unfinished {m}-process profile ({listed}), but "
                        f"this run has {world} processes; resume it with {m} processes (e.g. torchrun --nproc-per-node "
                        f"{m}), or delete those files to start over")


def profile_sharded(pipe, config: ProfileConfig, out, session: Session, *, progress: bool = True) -> Profile:
    """Profile ``pipe`` on every rank of ``session``: rank r measures shard (r, n) into ``shard_file(out, r, n)``,
    rank 0 merges every shard (and the finished units of an existing ``out``) into ``out``. Every rank returns
    the merged Profile (its ``path`` is ``out`` on rank 0's machine)."""
    out = Path(out)
    rank, world = session.rank, session.world_size
    mine = shard_file(out, rank, world)
    total = len(config.seeds)

    def survey():
        if mine.exists():  # a resumed rank: its file must be this rank's shard of this profile
            foreign = sorted(u for u in existing_units(pipe, config, mine) if u % world != rank)
            if foreign:
                u = foreign[0]
                raise ProfileError(f"{mine} holds unit {u}, which belongs to rank {u % world} of {world}, not to rank "
                                   f"{rank}; it was renamed or copied from another run: delete it and rerun")
        done = sorted(existing_units(pipe, config, out)) if session.is_main else []
        return _stale_shards(out, world), done

    reports = session.exchange(survey, what="checking the files of earlier runs")
    stale = sorted({name for names, _ in reports for name in names})
    if stale:
        raise _stale_error(out, stale, world)
    done = set(reports[0][1])

    if len(done) < total:
        todo = [u for u in range(total) if u % world == rank and u not in done]

        def measure():
            if todo or mine.exists():
                record_units(pipe, config, mine, shard=(rank, world), skip=done,
                             progress=progress and session.is_main)

        session.exchange(measure, what="waiting for every rank to finish its shard", notify=progress)
        payload = mine.read_bytes() if mine.exists() and not session.is_main else None
        gathered = session.gather_to_main(payload, what="sending the shard files to rank 0")
        merged = session.on_main(lambda: _merge(out, mine, gathered), what="waiting for rank 0 to merge the shards")
    else:  # `out` already holds every unit: nothing to measure or merge
        merged = session.on_main(lambda: Profile.load(out), what="waiting for rank 0 to read the profile")
    remove_profile_file(mine)  # its units are in `out` now
    return merged


def _merge(out: Path, mine: Path, payloads: list) -> Profile:
    """Rank 0: merge ``out`` (if there), its own shard file and the other ranks' (``payloads``: file bytes) into
    ``out``, atomically, holding ``out``'s writer lock (so a profile another process is writing into ``out`` is
    never replaced)."""
    temps = []
    out.parent.mkdir(parents=True, exist_ok=True)  # rank 0 may have had nothing to measure here
    lock = writer_lock(out)
    try:
        inputs = [out] if out.is_file() and out.stat().st_size > 0 else []
        if mine.exists():
            inputs.append(mine)
        for r, data in enumerate(payloads):
            if data is None:
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.rank{r}.", suffix=".tmp", dir=out.parent)
            temps.append(Path(tmp))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            inputs.append(Path(tmp))
        if out in inputs:  # `out` is an input: merge beside it, then replace it in one step
            fd, target = tempfile.mkstemp(prefix=f".{out.name}.merged.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            temps.append(Path(target))
            merged = merge_profiles(inputs, target)
            os.replace(target, out)
        else:
            merged = merge_profiles(inputs, out)
    finally:
        for t in temps:
            remove_profile_file(t)
        lock.release()
    merged.path = out
    return merged
