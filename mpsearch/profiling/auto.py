"""The automatic profile mode (the default): choose the profile's approximations from the model's size and a
measured probe, so that the whole command (the probe included) stays within a time factor and a memory cap.

The rule (``choose_profile``):

* A denoiser below ``EXACT_PARAMS`` parameters (the embedded defaults, the tiny test architectures) is
  profiled exactly, without a probe: at that size exact is cheap in absolute terms, and the choice is then
  deterministic (the same profile, bit for bit, as ``mode="exact"``).
* A larger denoiser is probed, and the probe is the profile's own first unit (:func:`profile_auto`): one
  plain one-step generation (the generation's time and peak, which the targets are factors of), then the
  profile starts with the settings every candidate shares (``sample=64``, ``replay_batch=1``); after its first
  unit's probed generation (setup, the seconds of a probed step, the generation's peak) one replay of one step
  and one row (``replay_rows=1``) times a replayed row, and only then is the choice made. The first unit's
  generation is kept, and so is that replay when the choice replays as it did (1 step x 1 row): no work is
  thrown away but the one-step generation and, otherwise, one row's replay. Exact is not a candidate there (its
  probe alone would cost several generations; docs/benchmarks.md, section ``scale``). The candidates are the
  settings whose decisions were checked (docs/benchmarks.md, ``auto-mode-decisions``):
  ``sample=64``, ``replay_batch=1``, ``replay_steps`` 5 or 4 of every row (``checked_settings()``), and a
  checkpointed share of the blocks of 0, 0.5 or 1. Their times and peaks follow linearly from the probe (the
  replay scales with replayed steps and rows; checkpointing's time and memory are interpolated between the
  probe's replay and a second replay with every block checkpointed, run only when memory needs it); a peak is
  at least the generation's.
* Every prediction is the whole command's: the one-step generation and the probe included (what was spent
  before the choice, the remaining units' generations, every unit's replay less the probe's when it is kept).
  The least approximation whose predicted time is within ``max_time`` generations and whose peak is within the
  memory cap wins, in the order 5 replayed steps x every row, 5 x one row, 4 x every row, ... 1 x one row
  (checkpointing counts as no approximation, since it changes no number: the least share that fits is taken).
  If none is within both, the fastest within the memory cap, then the smallest peak that fits in free memory;
  if nothing fits in free memory, a one-line ResourceError names what would, before the profile's file exists.

:func:`choose_profile` makes the same choice from a separate one-step, one-unit probe
(:func:`mpsearch.profiling.estimate.estimate_profile`), whose work is not kept (rank 0 of a distributed
launch chooses with it for every rank); its predictions count that probe too. Fields the caller set (a
``sample``, ``replay_steps``, ... that is not the default) are kept as given; below ``EXACT_PARAMS`` the
caller's config is used unchanged.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace

import torch

from mpsearch.errors import ResourceError, UsageError
from mpsearch.models import get_denoiser
from mpsearch.profiling.estimate import PeakRSS, estimate_profile, release_free_memory, rss_bytes
from mpsearch.profiling.profiler import ProfileConfig, UnitProbe, profile_local
from mpsearch.profiling.sensitivity import replayed_steps
from mpsearch.profiling.store import Profile
from mpsearch.runtime.generation import generate

__all__ = ["APPROXIMATIONS", "EXACT_PARAMS", "MAX_TIME", "MEMORY_FACTOR", "AutoChoice", "checked_settings",
           "choose_profile",
           "parse_max_memory", "profile_auto", "resume_choice", "would_probe"]

#: below this many denoiser parameters the auto mode profiles exactly, without probing
EXACT_PARAMS = 100_000_000
#: the default time target: the profile within this many generations of the same conditions
MAX_TIME = 3.0
#: the default memory cap on the CPU: this factor of a generation's peak (on a GPU: the device's free memory)
MEMORY_FACTOR = 1.25
#: the settings the auto mode chooses (the others are the caller's)
APPROXIMATIONS = ("sample", "replay_steps", "replay_batch", "replay_rows", "replay_checkpoint")
_SAMPLE, _SHARES = 64, (0.0, 0.5, 1.0)
#: the (replayed steps, replayed rows; None: every row) the auto mode may choose, least approximation first: only
#: those whose decisions matched the exact profile's on the default models and the tiny architectures
#: (docs/benchmarks.md, ``auto-mode-decisions``: 3, 2 and 1 replayed steps and one replayed row failed there)
_CHECKED: tuple[tuple[int, int | None], ...] = ((5, None), (4, None))


def checked_settings() -> list[dict]:
    """The approximations the auto mode may choose on a probed model, least first, as ProfileConfig fields
    (``replay_checkpoint`` left out: it changes no number). scripts/bench_scale_approx.py --auto checks each."""
    return [{"sample": _SAMPLE, "replay_batch": 1, "replay_steps": k, "replay_rows": r} for k, r in _CHECKED]


@dataclass(frozen=True)
class AutoChoice:
    """The auto mode's decision: the config to profile with, the one line that says why, and the prediction."""

    config: ProfileConfig
    line: str
    #: whether the choice came from a probe; without one (a small model) the config is the caller's, unchanged,
    #: and ``mpsearch.profile`` says nothing: the profile of old
    probed: bool
    seconds: float | None = None
    peak_bytes: int | None = None
    generation_seconds: float | None = None
    generation_peak_bytes: int | None = None
    #: predicted seconds of a probed step and of a unit's replay (``profile_local(forecast=...)``: the bar's ETA)
    forecast: dict | None = None


def parse_max_memory(spec) -> tuple[int | None, float | None]:
    """``--max-memory``: ``"20GB"`` (bytes, as budgets parse them) -> (bytes, None); ``"1.5x"`` (a factor of one
    generation's peak) -> (None, factor); None -> (None, None)."""
    if spec is None:
        return None, None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return (int(spec), None) if spec > 0 else _bad_memory(spec)
    s = str(spec).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*x", s, re.IGNORECASE)
    if m:
        f = float(m.group(1))
        return (None, f) if f > 0 else _bad_memory(spec)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", s, re.IGNORECASE)
    if m is None:
        return _bad_memory(spec)
    units = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
             "tib": 2**40}
    n = int(float(m.group(1)) * units[m.group(2).lower()])
    return (n, None) if n > 0 else _bad_memory(spec)


def _bad_memory(spec) -> tuple[int | None, float | None]:
    raise UsageError(f"max memory must be a size (20GB, 16GiB) or a factor of a generation's peak (1.5x), got "
                     f"{spec!r}; pass e.g. --max-memory 20GB or --max-memory 1.5x")


def fixed_fields(config: ProfileConfig) -> set[str]:
    """The approximation fields ``config`` sets (not at their defaults): the auto mode keeps them."""
    default = ProfileConfig()
    return {k for k in APPROXIMATIONS if getattr(config, k) != getattr(default, k)}


def denoiser_params(pipe) -> int:
    return sum(p.numel() for p in get_denoiser(pipe).parameters())


def would_probe(pipe) -> bool:
    """Whether the auto mode probes ``pipe`` (its denoiser has at least ``EXACT_PARAMS`` parameters)."""
    return denoiser_params(pipe) >= EXACT_PARAMS


def free_memory(device) -> int:
    """Bytes a profile could reach on ``device``: on a GPU what is allocated plus what is free there; on the CPU
    this process's resident set plus the memory the system has available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_allocated(device))
    try:
        import psutil  # type: ignore[import-untyped]

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    return rss_bytes() + available


def measure_generation(pipe, config: ProfileConfig) -> dict:
    """One plain one-step generation of ``config``'s first unit: its seconds, the denoiser's seconds per step,
    the rows of a denoiser call, and the peak memory; the generation of ``config.steps`` steps is predicted
    as the one-step run plus ``steps - 1`` more steps of the denoiser."""
    denoiser = get_denoiser(pipe)
    device = next(denoiser.parameters()).device
    calls: list = []
    rows: list[int] = []

    cuda = device.type == "cuda"

    def pre(module, args, kwargs):
        t = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        rows.append(int(t.shape[0]) if t is not None and t.dim() else 1)
        if cuda:
            torch.cuda.synchronize(device)  # the call's own time, not the launches'
        calls.append(time.perf_counter())

    def post(module, args, output):
        if cuda:
            torch.cuda.synchronize(device)
        calls[-1] = time.perf_counter() - calls[-1]

    handles = [denoiser.register_forward_pre_hook(pre, with_kwargs=True), denoiser.register_forward_hook(post)]
    try:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            generate(pipe, config.conditions, config.seeds[0], 1, config.guidance_scale, config.size)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if cuda else rss.peak
    finally:
        for h in handles:
            h.remove()
    step = float(sum(calls))
    return {"seconds": seconds + (config.steps - 1) * step, "one_step_seconds": seconds, "step_seconds": step,
            "rows": max(rows, default=1), "peak_bytes": int(peak), "device": device}


def _probe(pipe, config: ProfileConfig, checkpoint) -> dict:
    """``estimate_profile`` of ``config`` with ``replay_checkpoint=checkpoint``: a one-step, one-unit profile
    (the separate probe of :func:`choose_profile`; :func:`profile_auto` probes the profile's own first unit)."""
    return estimate_profile(pipe, replace(config, replay_checkpoint=checkpoint))


class _Watch:
    """The profile's clock and peak memory from its start, for the probe of its first unit: the peak of the
    generation so far (``base_peak``) and each probe replay's own peak (``replay_peak``)."""

    def __init__(self, device):
        self.device, self.cuda = device, device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss = PeakRSS().__enter__()
        self.start = time.perf_counter()
        self.base_peak: int | None = None
        return self

    def __exit__(self, *exc):
        self.rss.__exit__(*exc)

    def peak_so_far(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(self.rss.peak)

    def memory_now(self) -> int:
        """The memory in use now: allocated on a GPU, the resident set on the CPU."""
        if self.cuda:
            return int(torch.cuda.memory_allocated(self.device))
        return rss_bytes()

    def replay(self, run, *, trim: bool = False) -> tuple[object, float, int]:
        """``run()``'s result, seconds and own peak (the whole process's memory while it ran); ``trim``: first
        give the allocator's free memory back (on the CPU), so that what an earlier replay freed is not counted
        in this one's peak (it costs the replay's time the pages it faults in again)."""
        if self.base_peak is None:
            self.base_peak = self.peak_so_far()  # the generation's: probes, recorded calls, the pipeline
            self.rss.__exit__(None, None, None)  # no more sampling for the rest of the profile
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif trim:
            release_free_memory()
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            result = run()
            if self.cuda:
                torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        peak = int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else int(rss.peak)
        return result, seconds, peak


def _measure_unit(probe: UnitProbe, config: ProfileConfig, checkpoint, watch: _Watch) -> dict:
    """The probe of the profile's first unit (its probed generation done): the parts ``choose_profile``'s
    separate probe measures (setup, a probed step, the rest of the profile's overhead), from that generation,
    plus one replay of ``config``'s rows and micro-batches at one step with ``replay_checkpoint=checkpoint``:
    its seconds, its peak, the generation's peak (``base_peak_bytes``) and the sensitivity it measured."""
    elapsed = time.perf_counter() - watch.start
    sens, seconds, peak = watch.replay(lambda: probe.replay(
        replay_steps=1, replay_rows=config.replay_rows, replay_batch=config.replay_batch,
        replay_checkpoint=checkpoint), trim=bool(checkpoint))  # after a replay without checkpointing
    return {"setup_seconds": probe.setup_seconds, "step_seconds": probe.generate_seconds / probe.steps,
            "overhead_seconds": max(0.0, elapsed - probe.setup_seconds - probe.generate_seconds),
            "replay_seconds": seconds, "peak_bytes": peak, "base_peak_bytes": watch.base_peak, "sens": sens}


#: a replay's peak above the memory before it, as a factor of the activations it holds for its backward pass
#: (``held_activations``): the backward pass's gradients and the allocator's slack come on top. Measured on the
#: real-size SD1.5, PixArt-Sigma and DiT-XL (one row, 64 px): 1.10x, 1.58x and 1.60x
HELD_FACTOR = 1.7


def _measure_held(probe: UnitProbe, config: ProfileConfig, watch: _Watch) -> dict:
    """The activations a replay of ``config``'s rows and micro-batches would hold (measured without holding
    them), the seconds of that forward pass, and the replay's predicted peak: the memory now plus
    ``HELD_FACTOR`` times them."""
    elapsed = time.perf_counter() - watch.start
    (held, forward), seconds, _ = watch.replay(lambda: probe.held(
        replay_steps=1, replay_rows=config.replay_rows, replay_batch=config.replay_batch))
    now = watch.memory_now()
    return {"bytes": held, "forward_seconds": forward, "seconds": seconds,
            "predicted_peak_bytes": int(now + HELD_FACTOR * held), "setup_seconds": probe.setup_seconds,
            "step_seconds": probe.generate_seconds / probe.steps,
            "overhead_seconds": max(0.0, elapsed - probe.setup_seconds - probe.generate_seconds) + seconds}


def _predicted_unit(held: dict, p1: dict | None) -> dict:
    """The probe's parts for a replay without checkpointing that was not run (its peak predicted by
    :func:`_measure_held`): the checkpointed replay's (``p1``) less the forward pass checkpointing adds; without
    ``p1``, a forward and a backward pass of twice its cost."""
    if p1 is None:
        return {"replay_seconds": 3 * held["forward_seconds"], "peak_bytes": held["predicted_peak_bytes"],
                "setup_seconds": held["setup_seconds"], "step_seconds": held["step_seconds"],
                "overhead_seconds": held["overhead_seconds"], "sens": None, "ran": False}
    return {**p1, "replay_seconds": max(p1["replay_seconds"] - held["forward_seconds"], 0.0),
            "peak_bytes": max(held["predicted_peak_bytes"], p1["peak_bytes"]), "sens": None, "ran": False}


@dataclass(frozen=True)
class _Candidate:
    replay_steps: int
    replay_rows: int | None
    share: float
    seconds: float
    peak: int
    replay: float  # seconds of one unit's replay


def _describe(config: ProfileConfig) -> str:
    if config.sample is None and config.replay_steps is None and config.replay_rows is None \
            and config.replay_batch is None and not config.replay_checkpoint:
        return "exact"
    parts = [f"sample {config.sample}" if config.sample else "every element"]
    k = len(replayed_steps(config.steps, config.replay_steps))
    rows = "every row" if config.replay_rows is None else f"{config.replay_rows} row" + "s" * (config.replay_rows > 1)
    parts.append(f"replay {k} step{'s' * (k > 1)} x {rows}")
    if config.replay_batch:
        parts.append(f"micro-batch {config.replay_batch}")
    rc = config.replay_checkpoint
    if rc:
        parts.append("checkpoint every block" if rc is True else f"checkpoint {rc:g} of blocks")
    return ", ".join(parts)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n < 1e10 else f"{n / 1e9:.0f} GB"


def _count(n: int) -> str:
    return f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.2g}M"


def _secs(t: float) -> str:
    return f"{t:.0f} s" if t >= 10 else f"{t:.1f} s"


def _flags(c: _Candidate) -> str:
    s = f"--replay-steps {c.replay_steps}"
    if c.replay_rows:
        s += f" --replay-rows {c.replay_rows}"
    if c.share:
        s += " --replay-checkpoint" + ("" if c.share == 1 else f" {c.share:g}")
    return s


@dataclass(frozen=True)
class _Setup:
    """What a choice starts from: the caller's config, the probe's config, the fields the caller fixed."""

    config: ProfileConfig
    probe: ProfileConfig  # sample 64, micro-batch 1, one replayed row, unless the caller set them
    fixed: set
    fixed_share: float | None
    cap_bytes: int | None
    cap_factor: float | None


def _setup(config: ProfileConfig, max_time, max_memory) -> _Setup:
    if isinstance(max_time, bool) or not isinstance(max_time, (int, float)) or not max_time > 0:
        raise UsageError(f"max_time must be a positive number of generations, got {max_time!r}; pass e.g. "
                         "--max-time 3")
    cap_bytes, cap_factor = parse_max_memory(max_memory)
    fixed = fixed_fields(config)
    base = config
    if "sample" not in fixed:
        base = replace(base, sample=_SAMPLE)
    if "replay_batch" not in fixed:
        base = replace(base, replay_batch=1)
    probe_rows = config.replay_rows if "replay_rows" in fixed else 1
    fixed_share = None
    if "replay_checkpoint" in fixed:
        rc = config.replay_checkpoint
        fixed_share = 1.0 if rc is True else float(rc)
    return _Setup(config, replace(base, replay_rows=probe_rows), fixed, fixed_share, cap_bytes, cap_factor)


def _cap(st: _Setup, gen: dict, device) -> tuple[int, int, str]:
    """(the memory cap, the cap within free memory, how the line names the cap)."""
    free = free_memory(device)
    if st.cap_bytes is not None:
        cap = st.cap_bytes
    elif st.cap_factor is not None:
        cap = int(st.cap_factor * gen["peak_bytes"])
    elif device.type == "cuda":
        cap = free
    else:
        cap = int(MEMORY_FACTOR * gen["peak_bytes"])
    text = (_gb(st.cap_bytes) if st.cap_bytes is not None else f"{st.cap_factor:g}x its peak"
            if st.cap_factor is not None else "the device's free memory" if device.type == "cuda"
            else f"{MEMORY_FACTOR:g}x its peak")
    return cap, free, text


def _choose(pipe, st: _Setup, gen: dict, p0: dict, p1: dict | None, *, spent: float, gen_units: int,
            reused: bool, max_time: float, probe_text: str) -> AutoChoice:
    """The choice from the probe's parts ``p0`` (and ``p1``, every block checkpointed). Each candidate's
    prediction is the whole command's: ``spent`` (the generation's measurement and the probe, already run),
    ``gen_units`` more probed generations, and every unit's replay; with ``reused``, the probe's replay is the
    first unit's when the candidate replays as the probe did (it is not run again)."""
    config, fixed, fixed_share = st.config, st.fixed, st.fixed_share
    device = gen["device"]
    cap, free, cap_text = _cap(st, gen, device)
    cap_eff = min(cap, free)
    rows_b = gen["rows"]
    probe_rows = st.probe.replay_rows
    rows_probe = min(probe_rows or rows_b, rows_b)
    per_row = p0["replay_seconds"] / rows_probe
    per_row_ck = p1["replay_seconds"] / rows_probe if p1 else per_row
    base_peak = max(p0.get("base_peak_bytes") or 0, (p1 or {}).get("base_peak_bytes") or 0)
    units, steps = len(config.seeds), config.steps
    probe_steps = replayed_steps(steps, 1)

    def predict(k: int, rows: int | None, share: float) -> _Candidate:
        n = len(replayed_steps(steps, k))
        r = min(rows or rows_b, rows_b)
        replay = r * (per_row + share * (per_row_ck - per_row))
        again = units * n * replay
        if reused and replayed_steps(steps, k) == probe_steps and rows == probe_rows \
                and (share == 0 or (share == 1 and p1 is not None)):
            again -= n * replay  # the first unit's replay is the probe's
        seconds = spent + gen_units * steps * p0["step_seconds"] + again
        peak = p0["peak_bytes"] + share * ((p1["peak_bytes"] if p1 else p0["peak_bytes"]) - p0["peak_bytes"])
        return _Candidate(k, rows, share, seconds, int(max(peak, base_peak)), n * replay)

    ks: list[int] = [int(config.replay_steps or steps)] if "replay_steps" in fixed else \
        sorted({min(k, steps) for k, _ in _CHECKED}, reverse=True)
    row_opts = [config.replay_rows] if "replay_rows" in fixed else list(dict.fromkeys(r for _, r in _CHECKED))
    if "replay_steps" in fixed or "replay_rows" in fixed:  # the caller's setting x the other's checked values
        pairs = [(k, r) for k in ks for r in row_opts]
    else:  # only the checked settings, least approximation first (a step count above ``steps`` replays them all)
        pairs = list(dict.fromkeys((min(s["replay_steps"], steps), s["replay_rows"]) for s in checked_settings()))
    shares = [fixed_share] if fixed_share is not None else ([s for s in _SHARES] if p1 else [0.0])
    ladder = [predict(k, r, s) for k, r in pairs for s in shares]
    t_cap = max_time * gen["seconds"]
    targets = f"within {max_time:g}x a generation and {cap_text}"
    chosen = next((c for c in ladder if c.seconds <= t_cap and c.peak <= cap_eff), None)
    if chosen is None:
        within = [c for c in ladder if c.peak <= cap_eff]
        if within:
            chosen = min(within, key=lambda c: c.seconds)
            targets = f"nothing checked is within {max_time:g}x a generation: the fastest within {cap_text}"
        else:
            fits = [c for c in ladder if c.peak <= free]
            if not fits:
                # the least approximation that would fit, the given replay settings kept where they can be
                every = [predict(k, r, s) for k in ks for r in row_opts for s in (_SHARES if p1 else (0.0,))]
                ok = [c for c in every if c.peak <= free]
                hint = (f"these fit: {_flags(ok[0])} ({_gb(ok[0].peak)})" if ok else
                        "no checked setting fits: free memory, or profile fewer conditions per unit "
                        "or a smaller --size")
                raise ResourceError(f"profile: predicted peak {_gb(min(c.peak for c in ladder))} exceeds the "
                                    f"{_gb(free)} free on {device}; {hint}")
            chosen = min(fits, key=lambda c: (c.peak, c.seconds))
            targets = f"nothing checked is within {cap_text}: the smallest peak"
    share = chosen.share if chosen.share not in (0.0, 1.0) else bool(chosen.share)
    base = replace(st.probe, replay_rows=config.replay_rows)
    result = replace(base, replay_steps=chosen.replay_steps, replay_rows=chosen.replay_rows,
                     replay_checkpoint=config.replay_checkpoint if fixed_share is not None else share)
    why = (f"denoiser {_count(denoiser_params(pipe))} params, at least {_count(EXACT_PARAMS)}: exact is not probed; "
           + (f"the least checked approximation {targets}" if targets.startswith("within") else targets))
    result = replace(result, mode="auto", reason=why)
    ratio = chosen.seconds / gen["seconds"]
    line = (f"profile: auto -> {_describe(result)} ({why}); predicted {ratio:.1f}x a generation "
            f"({_secs(chosen.seconds)}, {probe_text}), peak {_gb(chosen.peak)} "
            f"({chosen.peak / gen['peak_bytes']:.2f}x)")
    return AutoChoice(result, line, probed=True, seconds=chosen.seconds, peak_bytes=chosen.peak,
                      generation_seconds=gen["seconds"], generation_peak_bytes=gen["peak_bytes"],
                      forecast={"step": p0["step_seconds"], "replay": chosen.replay})


def _small(pipe, config: ProfileConfig) -> AutoChoice:
    how = "exact" if not fixed_fields(config) else _describe(config)
    return AutoChoice(config, f"profile: auto -> {how} (denoiser {_count(denoiser_params(pipe))} params, below "
                      f"{_count(EXACT_PARAMS)}: exact is cheap at this size; no probe)", probed=False)


def choose_profile(pipe, config: ProfileConfig, *, max_time: float = MAX_TIME, max_memory=None) -> AutoChoice:
    """The auto mode's profile configuration for ``pipe`` and ``config`` (see the module's docstring for the
    rule), from a separate probe (a one-step, one-unit profile, whose work is not kept: the distributed launch's
    rank 0 chooses with it; :func:`profile_auto` probes the profile's own first unit instead). ``max_time``:
    generations of the same conditions; ``max_memory``: bytes, ``"20GB"`` or ``"1.5x"`` (a factor of a
    generation's peak; default 1.25x on the CPU, the device's free memory on a GPU). The prediction includes
    the probe's cost. Raises a ResourceError, before anything large is allocated, when no setting's predicted
    peak fits in free memory."""
    st = _setup(config, max_time, max_memory)
    if not would_probe(pipe):
        return _small(pipe, config)
    gen = measure_generation(pipe, config)
    t_probe = time.perf_counter()
    p0 = _probe(pipe, st.probe, False)
    cap, free, _ = _cap(st, gen, gen["device"])
    p1 = None
    if p0["peak_bytes"] > min(cap, free) or st.fixed_share:
        try:
            p1 = _probe(pipe, st.probe, True)
        except UsageError:
            p1 = None  # the denoiser has no activation checkpointing
    probe_seconds = time.perf_counter() - t_probe
    overhead = max(0.0, p0["measured_seconds"] - p0["setup_seconds"] - p0["step_seconds"] - p0["replay_seconds"])
    spent = gen["one_step_seconds"] + probe_seconds + overhead + p0["setup_seconds"]
    return _choose(pipe, st, gen, p0, p1, spent=spent, gen_units=len(config.seeds), reused=False,
                   max_time=max_time, probe_text=f"the probe's {_secs(gen['one_step_seconds'] + probe_seconds)} "
                   "included")


def profile_auto(pipe, config: ProfileConfig, *, out, progress: bool = True, max_time: float = MAX_TIME,
                 max_memory=None, say=None) -> Profile:
    """Profile ``pipe`` into ``out`` in the auto mode, probing the profile's own first unit: one plain one-step
    generation (the time and peak the targets are factors of), then the profile starts with the settings every
    candidate shares (``sample=64``, ``replay_batch=1``, unless given); after the first unit's probed generation
    one replay of one step (one row, unless given; every block checkpointed too when memory needs it) times the
    replay, the choice is made (:func:`choose_profile`'s rule, each prediction the whole command's, the probe
    included), said in one line (``say``), and the profile goes on with it: the first unit's generation is kept,
    and its replay too when the choice replays as the probe did. A refusal (ResourceError) leaves no file."""
    st = _setup(config, max_time, max_memory)
    say = say or (lambda line: None)
    if not would_probe(pipe):
        choice = _small(pipe, config)
        return profile_local(pipe, choice.config, out=out, progress=progress)
    gen = measure_generation(pipe, config)
    device = gen["device"]

    def decide(probe: UnitProbe):
        cap, free, _ = _cap(st, gen, device)
        # the replay without checkpointing is run only where its predicted peak fits: else its probe alone
        # would be the profile's peak (and a peak over free memory would not be survived)
        held = _measure_held(probe, st.probe, watch)
        cap_eff = min(cap, free)
        fits = held["predicted_peak_bytes"] <= cap_eff
        p0 = _measure_unit(probe, st.probe, False, watch) if fits else None
        p1 = None
        if p0 is None or p0["peak_bytes"] > cap_eff or st.fixed_share:
            try:
                p1 = _measure_unit(probe, st.probe, True, watch)
            except UsageError:
                p1 = None  # the denoiser has no activation checkpointing
        if p0 is None:
            if p1 is not None or held["predicted_peak_bytes"] > free:
                p0 = _predicted_unit(held, p1)  # not run: it would not fit (the choice refuses without p1)
            else:
                p0 = _measure_unit(probe, st.probe, False, watch)  # nothing else to run; it fits in free memory
        probe_replays = sum(p["replay_seconds"] for p in (p0, p1) if p is not None and p.get("ran", True))
        spent = (gen["one_step_seconds"] + p0["overhead_seconds"] + p0["setup_seconds"]
                 + config.steps * p0["step_seconds"] + probe_replays)
        choice = _choose(pipe, st, gen, p0, p1, spent=spent, gen_units=len(config.seeds) - 1, reused=True,
                         max_time=max_time, probe_text=f"the probe's {_secs(gen['one_step_seconds'] + probe_replays)}"
                         " and its first unit included")
        say(choice.line)
        c = choice.config
        sens = None
        if replayed_steps(c.steps, c.replay_steps) == replayed_steps(c.steps, 1) \
                and c.replay_rows == st.probe.replay_rows:
            if not c.replay_checkpoint:
                sens = p0["sens"]
            elif c.replay_checkpoint is True and p1 is not None:
                sens = p1["sens"]
        return c, choice.forecast, sens

    with _Watch(device) as watch:
        return profile_local(pipe, st.probe, out=out, progress=progress, decide=decide)


def resume_choice(config: ProfileConfig, stored: dict | None) -> ProfileConfig | None:
    """The configuration an existing profile file recorded, if the auto mode chose it and ``config`` asks for
    the same conditions (the fields the caller set agreeing): resuming keeps the file's choice without a probe.
    None otherwise (a new choice is made; the file then says if it differs)."""
    if not stored or stored.get("mode") != "auto":
        return None
    try:
        recorded = ProfileConfig(**stored)
    except (TypeError, UsageError):
        return None
    fixed = fixed_fields(config)
    same = all(getattr(recorded, k) == getattr(config, k) for k in ProfileConfig.__dataclass_fields__
               if k not in APPROXIMATIONS and k not in ("mode", "reason"))
    agree = all(getattr(recorded, k) == getattr(config, k) for k in fixed)
    return recorded if same and agree else None
