"""Local-tier sensitivity profiling: one full-precision run, every (layer, format, step) measured.

A forward hook on each candidate layer takes the layer's real input at that step, runs it through the
quantized modules the executor would install (one per candidate format) and records the error against the
full-precision output. The model itself keeps running in full precision, so one pass over the conditions
fills the whole table. Hooks on the cacheable blocks record how much each block's output changed since
the previous step. After each run, the denoiser's calls are replayed once with gradients to measure how
strongly its output responds to each layer's output (:mod:`mpsearch.profiling.sensitivity`; the ``gn`` metric).
Results go to the profile file one unit of work (one seed's batch) at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mpsearch.errors import ProfileError, UsageError
from mpsearch.formats import Format, Packed, available_formats, get_format
from mpsearch.formats.base import abs_max, all_finite
from mpsearch.formats.variant import divide_input
from mpsearch.models import check_finite_weights, describe, get_denoiser, weights_digest
from mpsearch.offload import loaded_tensors, materialized, offload_aware_replay
from mpsearch.plan import versions
from mpsearch.profiling.calibrate import calibrate, calibrated_layers
from mpsearch.profiling.sensitivity import CallRecorder, held_activations, output_sensitivity
from mpsearch.profiling.store import Profile, ProfileWriter, resumable_units, stored_weights, writer_lock
from mpsearch.profiling.store.files import default_profile_path
from mpsearch.quantizers import quantize_candidate
from mpsearch.runtime.generation import generate
from mpsearch.runtime.qmodules import quantized_module
from mpsearch.runtime.steps import first_tensor

#: the largest seed a profile takes (32-bit, as the command line's --seeds)
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class ProfileConfig:
    """What a profile measures: conditions (labels or prompts, x seeds), steps, guidance, candidate formats.

    ``prompts`` (text-to-image pipelines) replace ``labels``: when prompts are given, labels are not used.
    ``size`` sets the image height = width in pixels (None: the pipeline's default).
    """

    labels: tuple[int, ...] = tuple(range(10))
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 20
    guidance_scale: float | None = None
    formats: tuple[str, ...] = ("int8", "nvfp4", "int4")
    prompts: tuple[str, ...] = ()
    size: int | None = None
    #: estimate each (layer, format, step) statistic from a seeded random subset of at most ``sample`` output
    #: channels (fixed per layer) times at most ``sample`` activation rows (tokens, or a conv's output pixels;
    #: drawn per call) instead of the whole output; None measures every element (exact)
    sample: int | None = None
    #: replay (output sensitivity, ``gn``) only this many steps, evenly spread, and interpolate the others
    #: linearly; None replays every step
    replay_steps: int | None = None
    #: replay each recorded call in micro-batches of at most this many rows (e.g. 1: the two halves of a
    #: classifier-free-guidance batch one at a time), for a fraction of the replay's memory; None: whole calls
    replay_batch: int | None = None
    #: replay only this many rows of each recorded call's batch (e.g. 1: one half of a classifier-free-guidance
    #: batch, drawn at random per call), their sums scaled up to the whole batch: an unbiased estimate (the
    #: denoiser treats rows independently) for that share of the replay's time; None: every row
    replay_rows: int | None = None
    #: checkpoint the denoiser's blocks during the replay (diffusers' activation checkpointing): the same
    #: numbers for one block's activations instead of all of them, at about one more forward pass per
    #: replayed call; a number in (0, 1]: that share of the blocks, evenly spread (0.5: about half the
    #: saving for half the recomputation). How the profile runs, not what it measures: not stored, a run
    #: resumes with or without it (except the auto mode's choice, stored with it: such a file resumes whole)
    replay_checkpoint: bool | float = False
    #: where ``prompts`` came from when they are built in (e.g. "4 of the built-in calibration set (seed 0)",
    #: :mod:`mpsearch.prompts`); None for the user's own prompts. Stored, so a resume with other prompts is refused
    prompt_set: str | None = None
    #: how the approximations were chosen: "auto" when the automatic mode chose them (recorded in the profile
    #: with ``reason``); "exact" asks ``mpsearch.profile`` for today's exact mode; None: the default (auto)
    mode: str | None = None
    #: with mode "auto": why the automatic mode chose these settings (recorded)
    reason: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise UsageError(f"prompts must be non-empty strings, got {list(self.prompts)[:5]}")
        if self.prompt_set is not None and (not isinstance(self.prompt_set, str) or not self.prompts):
            raise UsageError(f"prompt_set names where the prompts came from and needs prompts, got "
                             f"{self.prompt_set!r} with {len(self.prompts)} prompts; leave prompt_set out")
        object.__setattr__(self, "labels", () if self.prompts else tuple(int(l) for l in self.labels))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "formats", tuple(self.formats))
        if not self.labels and not self.prompts:
            raise UsageError("labels is empty: profile needs at least one condition (e.g. --labels 0,1,2, "
                             "or --prompts FILE for a text-to-image pipeline)")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise UsageError(f"size must be a positive number of pixels, got {self.size!r}")
        for key in ("sample", "replay_steps", "replay_batch", "replay_rows"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UsageError(f"{key} must be a positive integer (or None for the full computation), got {v!r}")
        rc = self.replay_checkpoint
        if not isinstance(rc, bool) and not (isinstance(rc, (int, float)) and 0 < rc <= 1):
            raise UsageError(f"replay_checkpoint must be True, False or the share of blocks to checkpoint in "
                             f"(0, 1], got {rc!r}; pass e.g. --replay-checkpoint 0.5")
        if not isinstance(rc, bool) and rc == 1:
            object.__setattr__(self, "replay_checkpoint", True)  # a share of 1 is every block
        if self.mode not in (None, "auto", "exact"):
            raise UsageError(f"mode must be 'auto' or 'exact', got {self.mode!r}; pass mode='exact' for the exact "
                             "profile (--exact) or leave it unset for the automatic choice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}; "
                             "pass e.g. --seeds 0,1")
        if any(not 0 <= s <= MAX_SEED for s in self.seeds):
            raise UsageError(f"seeds must be integers from 0 to {MAX_SEED:,}, got {list(self.seeds)}; "
                             "pass e.g. --seeds 0,1")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps must be a positive integer, got {self.steps!r}; pass e.g. --steps 20")
        g = self.guidance_scale
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 0
                              or g == float("inf")):
            raise UsageError(f"guidance_scale must be a finite number >= 0, got {g!r}; pass e.g. --guidance 2.0")
        plain = [f for f in available_formats() if f != "fp"]
        known = plain + [f for f in available_formats(calibrated=True) if f not in plain and f != "fp"]
        bad = [f for f in self.formats if f not in known]
        if bad or not self.formats:
            raise UsageError(f"formats {list(self.formats)} must be a non-empty subset of {', '.join(known)}; "
                             f"pass e.g. --formats {','.join(plain)}")
        if len(set(self.formats)) != len(self.formats):
            raise UsageError(f"formats {list(self.formats)} repeat a format; list each once")

    @property
    def conditions(self) -> tuple:
        """What each unit generates: the prompts if given, else the class labels."""
        return self.prompts or self.labels

    def to_dict(self) -> dict:
        d = asdict(self)
        auto = self.mode == "auto" and self.reason is not None  # recorded only when the auto mode chose
        if not (auto and self.replay_checkpoint):  # how the profile runs; the auto mode's choice keeps it
            d.pop("replay_checkpoint")
        if not auto:
            d.pop("mode")
            d.pop("reason")
        if not self.prompts:  # label-conditioned profiles keep the keys they always had (resume stays valid)
            d.pop("prompts")
        for key in ("size", "sample", "replay_steps", "replay_batch", "replay_rows",
                    "prompt_set"):  # absent when unset: older files resume
            if d[key] is None:
                d.pop(key)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class _Accumulator:
    """Per-unit sums: (L, F, S, 4) layer statistics and (B, S, 2) block changes; ``seed`` seeds the unit's
    row subsets (so a unit's numbers do not depend on which units ran before it in this process)."""

    stats: np.ndarray
    blocks: np.ndarray
    prev: dict = field(default_factory=dict)
    seed: int = 0


def _sums(yq: torch.Tensor, y: torch.Tensor) -> list[float]:
    # float32 elementwise, float64 accumulation: a fraction of the cost of float64 throughout
    return torch.stack([(yq - y).square().sum(dtype=torch.float64), yq.square().sum(dtype=torch.float64),
                        (y * yq).sum(dtype=torch.float64)]).tolist()


class _LayerProbe:
    """Measures one layer's output error under each candidate format at every call.

    Exact (``sample=None``): each candidate is quantized, run through the executor's quantized module and
    released at every call, so at most one layer's candidates are held at a time (the numbers are those of
    a module built once and kept). Sampled: a seeded random subset of at most ``sample`` output channels is
    quantized once (rows of the weight packed exactly as in the whole weight; only the packed rows are kept,
    dequantized at each call), and at each call a seeded subset of at most ``sample`` activation rows is run
    through it; the four sums are scaled up to the whole output's element count.
    """

    def __init__(self, index, module, candidates, steps, acc_ref, name="", sample=None, calibration=None):
        self.index = index
        #: the layer's input statistics (the calibrated variants' codes are made with them), or None
        self.calibration = calibration
        #: exact mode: each calibrated candidate's packed weight, made at the first call and kept (a variant's
        #: search costs more than a call's measurement)
        self._calibrated: dict[int, Packed] = {}
        self.name = name
        self.steps = steps
        self.acc_ref = acc_ref
        self.module = module
        self.formats = [(fi, get_format(f)) for fi, f in candidates]
        self.sample = sample
        self.conv = isinstance(module, torch.nn.Conv2d)
        self._gen = torch.Generator()
        self._acc_id = None
        if sample is not None:
            own = loaded_tensors(module)  # offloaded weights (accelerate): loaded on the execution device
            w = own["weight"]
            out = w.shape[0]
            if out > sample:
                g = torch.Generator().manual_seed(1_000_003 * (index + 1))
                self.channels = torch.randperm(out, generator=g)[:sample].sort().values
            else:
                self.channels = torch.arange(out)
            self.subsets = []
            #: whether a candidate's arithmetic needs the whole activation's amax (a per-tensor scale)
            self.needs_amax = any(type(fmt).matmul_rows is not Format.matmul_rows for _, fmt in self.formats)
            for fi, fmt in self.formats:
                if getattr(fmt, "calibrated", False):
                    packed = quantize_candidate(fmt.name, w, calibration, rows=self.channels)
                else:
                    packed = fmt.quantize_rows(w, self.channels)
                self.subsets.append((fi, fmt, packed))  # packed only: dequantized per call (64 rows: cheap)
            self.bias = None if own.get("bias") is None else own["bias"][self.channels.to(w.device)]

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        acc = self.acc_ref[0]
        if acc is None:  # paused: the output-sensitivity replay runs the model again
            return
        x = inputs[0].to(output.device)  # where the layer ran (a device map may hand it inputs from another device)
        if not all_finite(output):
            raise ProfileError(f"layer {self.name} gave a full-precision output that is not finite (NaN/inf) at step "
                               f"{self.steps.step}, so its errors cannot be measured; check the model in full "
                               "precision (weights, dtype, conditions) before profiling")
        stats = acc.stats
        s = self.steps.step
        if self.sample is not None:
            if self._acc_id != id(acc):  # a new unit: its own row draws
                self._acc_id = id(acc)
                self._gen.manual_seed(int(acc.seed) * 1_000_033 + self.index)
            if self.subsets and next(iter(self.subsets[0][2].tensors.values())).device != output.device:
                self._move_subsets(output.device)  # model offload: made on the CPU, used on the execution device
            for fi, v in self._sampled(x, output):
                stats[self.index, fi, s] += v
            return
        y = output.detach().float().flatten()
        ref2 = float(y.square().sum(dtype=torch.float64))
        with materialized(module):  # sequential offload: the weights are back on meta after the forward
            w = module.weight.detach()
            for fi, fmt in self.formats:
                if getattr(fmt, "calibrated", False):
                    if fi not in self._calibrated:
                        self._calibrated[fi] = quantize_candidate(fmt.name, w, self.calibration)
                    packed = self._calibrated[fi]
                else:
                    packed = fmt.quantize(w)
                q = quantized_module(module, packed)
                q.cache_dequantized = True  # dequantized once for this call, released with q
                sums = _sums(q(x).float().flatten(), y)
                del q
                stats[self.index, fi, s] += (sums[0], ref2, sums[1], sums[2])

    def _move_subsets(self, device):
        def to(packed):
            return Packed(packed.format, packed.shape, packed.dtype,
                          {k: t.to(device) for k, t in packed.tensors.items()})

        self.subsets = [(fi, fmt, to(packed)) for fi, fmt, packed in self.subsets]
        self.bias = None if self.bias is None else self.bias.to(device)

    def _rows(self, n: int, device) -> torch.Tensor:
        if n <= self.sample:
            return torch.arange(n, device=device)
        return torch.randperm(n, generator=self._gen)[:self.sample].to(device)

    def _sampled(self, x, output):
        """(format index, (err2, ref2, q2, cross)) estimated from the subset, scaled to the whole output."""
        ch = self.channels.to(output.device)
        if self.conv:
            m = self.module
            n, c = x.shape[:2]
            oh, ow = output.shape[2], output.shape[3]
            rows = self._rows(n * oh * ow, x.device)  # output pixels in (n, oh, ow) order
            kh, kw = m.kernel_size
            xp = torch.nn.functional.pad(x, (m.padding[1], m.padding[1], m.padding[0], m.padding[0])) \
                if (m.padding[0] or m.padding[1]) else x
            sn, sc, sh, sw = xp.stride()
            patches = xp.as_strided((n, oh, ow, c, kh, kw), (sn, sh * m.stride[0], sw * m.stride[1], sc,
                                                             sh * m.dilation[0], sw * m.dilation[1]))
            ni, rem = rows // (oh * ow), rows % (oh * ow)
            xs = patches[ni, rem // ow, rem % ow].reshape(len(rows), -1)
            # the sampled (pixel, channel) outputs, gathered without a channels-last copy of the whole output
            y = output.detach()[ni[:, None], ch[None, :], (rem // ow)[:, None], (rem % ow)[:, None]].float()
            whole = xp
        else:
            x2 = x.reshape(-1, x.shape[-1])
            rows = self._rows(x2.shape[0], x.device)
            xs = x2[rows]
            y = output.detach().reshape(-1, output.shape[-1])[rows][:, ch].float()
            whole = x2
        amax = None
        if self.needs_amax:  # the activation's amax sets NVFP4's tensor scale
            amax = abs_max(whole)
        scale = output.numel() / max(y.numel(), 1)
        ref2 = float(y.square().sum(dtype=torch.float64)) * scale
        res = []
        for fi, fmt, packed in self.subsets:
            smooth = packed.tensors.get("smooth")
            # a smoothed activation's amax is that of the divided activation
            tensor_amax = amax if smooth is None or amax is None else \
                abs_max(divide_input(whole, smooth, channel_dim=1 if self.conv else -1))
            yq = fmt.matmul_rows(xs, packed, tensor_amax=tensor_amax).to(output.dtype)
            if self.bias is not None:
                yq = yq + self.bias.to(yq.dtype)
            sums = _sums(yq.float(), y)
            res.append((fi, (sums[0] * scale, ref2, sums[1] * scale, sums[2] * scale)))
        return res


class _BlockProbe:
    def __init__(self, index, steps, acc_ref):
        self.index, self.steps, self.acc_ref = index, steps, acc_ref

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        o = first_tensor(output)
        acc = self.acc_ref[0]
        if o is None or acc is None:
            return
        o = o.detach().float()
        prev = acc.prev.get(self.index)
        s = self.steps.step
        if prev is not None and prev.shape == o.shape and s > 0:
            acc.blocks[self.index, s] += (float((o - prev).square().sum(dtype=torch.float64)),
                                          float(o.square().sum(dtype=torch.float64)))
        acc.prev[self.index] = o


def model_name(pipe) -> str:
    """The name a pipeline's profile file takes by default: the name ``mpsearch.load_pipeline`` loaded it by
    (``default``, ``default-unet``, a folder's name), else the folder it came from, else its denoiser's class."""
    name = getattr(pipe, "mpsearch_name", None)
    if name:
        return Path(str(name)).name
    source = getattr(getattr(pipe, "config", None), "get", lambda *_: None)("_name_or_path")
    if source and Path(str(source)).name:
        return Path(str(source)).name
    return type(get_denoiser(pipe)).__name__


def profile_local(pipe, config: ProfileConfig | None = None, *, out=None, shard: tuple[int, int] = (0, 1),
                  progress: bool = True, timings: dict | None = None, forecast: dict | None = None,
                  decide=None, **options) -> Profile:
    """Profile ``pipe``'s denoiser (local tier) into the SQLite file ``out`` and return the loaded Profile.

    ``options`` override fields of the default ProfileConfig (labels, seeds, steps, guidance_scale, formats).
    Running again with the same file and configuration resumes: finished units are skipped.
    ``shard=(i, n)`` measures only the units u with u % n == i.
    ``timings``, if given, receives the seconds spent building the probes (``setup``) and, per unit, in the
    probed generation (``generate``) and in the output-sensitivity replay (``replay``).
    ``forecast`` (``{"step": s, "replay": s}``: predicted seconds of a probed step and of a unit's replay, e.g.
    from the auto mode's probe) makes the progress bar count predicted seconds, so its ETA covers the replays.
    ``decide`` (the auto mode's probe, :func:`record_units`) settles the replay settings after the first unit's
    generation; the file is written with the settings it returns.
    """
    config = make_config(config, options)
    out = Path(out) if out is not None else default_profile_path(model_name(pipe))
    record_units(pipe, config, out, shard=shard, progress=progress, timings=timings, forecast=forecast,
                 decide=decide)
    return Profile.load(out)


def make_config(config: ProfileConfig | None, options: dict) -> ProfileConfig:
    """``config`` (default: ProfileConfig()) with the fields in ``options`` replaced."""
    if config is None:
        return ProfileConfig(**options)
    if options:
        return ProfileConfig(**{**asdict(config), **options})
    return config


def check_shard(shard) -> tuple[int, int]:
    """``shard`` as (i, n), checked: 0 <= i < n."""
    try:
        i, n = shard
    except (TypeError, ValueError):
        i, n = None, None
    if not (isinstance(n, int) and isinstance(i, int) and n >= 1 and 0 <= i < n):
        raise UsageError(f"shard must be i/n with 0 <= i < n, got {i}/{n}; pass e.g. --shard 0/2 and --shard 1/2")
    return i, n


def existing_units(pipe, config: ProfileConfig, path) -> set[int]:
    """The finished units of the profile file ``path`` if resuming it with ``pipe`` and ``config`` is valid (a
    ProfileError naming what differs otherwise); an empty set if there is no such file. Changes nothing."""
    if not Path(path).exists():
        return set()
    denoiser = get_denoiser(pipe)
    info = describe(denoiser, ("fp", *config.formats))
    return resumable_units(path, info, config.to_dict(), weights=_digest(denoiser, info, path))


def _digest(denoiser, info, path) -> str:
    """The weights digest to record in, or compare with, the profile file ``path``: in the scheme of the digest
    it already records (a profile begun by an older mpsearch resumes), else the default one."""
    recorded = stored_weights(path)
    scheme = recorded.split(":", 1)[0] if recorded and ":" in recorded else None
    return weights_digest(denoiser, info.names, **({"scheme": scheme} if scheme else {}))  # a retired one: an error


def record_units(pipe, config: ProfileConfig, out, *, shard: tuple[int, int] = (0, 1), skip=(),
                 progress: bool = True, timings: dict | None = None, forecast: dict | None = None,
                 decide=None) -> set[int]:
    """Measure shard ``(i, n)``'s units (u % n == i) into the profile file ``out``, except those already in it
    and those in ``skip`` (finished elsewhere), and return the units the file then holds.

    The file is opened (or created) and checked even when there is nothing left to measure; another process
    writing it is refused (``ProfileBusyError``). A file this call created that fails before finishing any unit
    is removed again (and a folder made for it); finished units are kept, and a file another process created is
    never removed.

    ``decide(probe: UnitProbe) -> (config, forecast, sensitivity or None)`` (the auto mode): called once, after
    the first unit's probed generation and before its replay; the first unit is that probe's work, kept. The
    returned config may change only the replay settings (and ``mode``/``reason``); the file is opened only then,
    with it, so an error raised by ``decide`` leaves no file. A sensitivity it returns (a replay it ran with the
    returned settings) is the first unit's, not replayed again.
    """
    i, n = check_shard(shard)
    out = Path(out)
    denoiser = get_denoiser(pipe)
    info = describe(denoiser, ("fp", *config.formats))
    check_finite_weights(denoiser)  # before any file is made
    folder_created = not out.parent.exists()
    opened: list[ProfileWriter] = []

    calibrations: dict = {}  # layer index -> Calibration, for the calibrated variants

    def open_writer(cfg: ProfileConfig) -> ProfileWriter:
        # a file another process writes is refused before its contents are read (the lock is re-entrant: the
        # writer takes it again)
        lock = writer_lock(out) if out.exists() else None
        try:
            opened.append(ProfileWriter(out, info, cfg.to_dict(), versions(), weights=_digest(denoiser, info, out),
                                        shard=(i, n), source=getattr(pipe, "mpsearch_source", None)))
        finally:
            if lock is not None:
                lock.release()
        if calibrations and not opened[0].has_calibration():
            opened[0].write_calibration(calibrations)  # before any unit: every unit's variants use it
        return opened[0]

    try:
        skip = set(skip)
        needed = calibrated_layers(info, config.formats)
        if decide is None:
            done = open_writer(config).done_units()
        else:
            done = set()  # the file is opened once the settings are decided
        todo = [u for u in range(len(config.seeds)) if u % n == i and u not in done and u not in skip]
        if todo and needed:
            if opened and opened[0].has_calibration():  # a resumed file: its units were measured with this
                index = {layer.name: li for li, layer in enumerate(info.layers)}
                calibrations.update({index[name]: c for name, c in opened[0].read_calibration(info).items()})
            else:
                calibrations.update(calibrate(pipe, info, config, needed, progress=progress))
                if opened:
                    opened[0].write_calibration(calibrations)
        if todo:
            _run_units(pipe, denoiser, info, config, opened[0] if decide is None else open_writer, todo, progress,
                       timings, forecast, decide, calibrations)
        writer = opened[0] if opened else open_writer(config)
        return writer.done_units()
    except BaseException:
        if opened:
            # a profile that failed before finishing any unit leaves no file behind; finished units are kept
            writer = opened[0]
            removed = writer.created and not writer.done_units()
            writer.abandon()
        else:
            removed = True  # decide refused: no file was made
        if removed:
            if folder_created:
                try:
                    out.parent.rmdir()
                except OSError:
                    pass
        raise
    finally:
        for writer in opened:
            writer.close()


@dataclass
class UnitProbe:
    """What the auto mode's probe sees of the first unit, after its probed generation and before its replay:
    the seconds spent building the probes (``setup_seconds``) and in the probed generation
    (``generate_seconds``, ``steps`` denoising steps), and ``replay(**settings)``, which replays the unit's
    recorded calls with the given replay settings (``replay_steps``, ``replay_rows``, ``replay_batch``,
    ``replay_checkpoint``; the others as configured) and returns the sensitivity; ``held(**settings)`` (the same
    settings but ``replay_checkpoint``) measures, without holding them, the bytes such a replay without
    checkpointing would hold for one backward pass, and the seconds of that forward pass
    (:func:`mpsearch.profiling.sensitivity.held_activations`)."""

    config: ProfileConfig
    steps: int
    setup_seconds: float
    generate_seconds: float
    replay: Callable[..., np.ndarray]
    held: Callable[..., tuple[int, float]]


_REPLAY_FIELDS = ("replay_steps", "replay_rows", "replay_batch", "replay_checkpoint", "mode", "reason")


def _check_decided(before: ProfileConfig, after: ProfileConfig) -> None:
    """A decided config may differ from the probed one only in how the replay runs (the generation is kept)."""
    changed = [k for k in ProfileConfig.__dataclass_fields__ if k not in _REPLAY_FIELDS
               and getattr(before, k) != getattr(after, k)]
    if changed:
        raise UsageError(f"the profile's settings were decided after its first unit's generation, but they change "
                         f"{', '.join(changed)}, which that generation measured; decide only the replay settings")


def _progress_bar(units: int, steps: int, progress: bool, forecast: dict | None):
    """The profile's bar and what a step and a unit's replay add to it: denoising steps, or with a ``forecast``
    predicted seconds of work (replays included), so tqdm's rate and ETA follow the whole profile."""
    if not forecast:
        return tqdm(total=units * steps, desc="profile", unit="step", disable=not progress), 1, 0
    step, replay = float(forecast["step"]), float(forecast["replay"])
    total = units * (steps * step + replay)
    digits = 0 if total >= 10 else 1
    bar = tqdm(total=total, desc="profile", disable=not progress,
               bar_format=f"{{l_bar}}{{bar}}| {{n:.{digits}f}}/{{total:.{digits}f}} s of predicted work "
                          "[{elapsed}<{remaining}]")
    return bar, step, replay


def _run_units(pipe, denoiser, info, config, writer, todo, progress, timings=None, forecast=None, decide=None,
               calibrations=None):
    """Measure ``todo``'s units into ``writer`` (with ``decide``: a function opening the writer for the config
    ``decide`` returns, see :func:`record_units`)."""
    timings = {} if timings is None else timings
    timings.update(setup=0.0, generate=[], replay=[])
    t_setup = time.perf_counter()
    formats = ("fp", *config.formats)
    modules = dict(denoiser.named_modules())
    acc_ref: list[_Accumulator] = [None]  # the current unit's accumulator, swapped per unit
    recorder = CallRecorder().install(denoiser)  # with the denoiser's step state, which the probes read
    step_state = recorder.state
    handles = []
    candidates = [modules[layer.name] for layer in info.layers]
    bar_ref: list = [None, 1, 0]  # the bar, what a step and what a unit's replay add to it
    try:
        for li, layer in enumerate(info.layers):
            cands = [(fi, f) for fi, f in enumerate(formats) if fi > 0 and f in layer.eligible]
            if cands:
                probe = _LayerProbe(li, modules[layer.name], cands, step_state, acc_ref, layer.name, config.sample,
                                    (calibrations or {}).get(li))
                handles.append(modules[layer.name].register_forward_hook(probe))
        for bi, block in enumerate(info.blocks):
            handles.append(modules[block].register_forward_hook(_BlockProbe(bi, step_state, acc_ref)))
        timings["setup"] = time.perf_counter() - t_setup
        L, F, S, B = len(info.layers), len(formats), config.steps, len(info.blocks)
        if decide is None:
            bar_ref[:] = _progress_bar(len(todo), S, progress, forecast)

        def tick(*_):
            if acc_ref[0] is not None and bar_ref[0] is not None:
                # returns None: a forward hook that returns a value would replace the output
                bar_ref[0].update(bar_ref[1])

        handles.append(denoiser.register_forward_hook(tick))

        def with_gradients(measure, cfg, unit, **extra):
            # the recorded calls run again with gradients: the recorder is paused (and the probes, acc_ref[0]
            # being None), offloaded weights are loaded as the replay needs them
            recorder.paused = True
            try:
                with offload_aware_replay(denoiser):
                    return measure(denoiser, recorder.calls, candidates, S, seed=config.seeds[unit],
                                   replay_steps=cfg.replay_steps, batch=cfg.replay_batch, rows=cfg.replay_rows,
                                   **extra)
            finally:
                recorder.paused = False

        def replay(cfg, unit):
            return with_gradients(output_sensitivity, cfg, unit, checkpoint=cfg.replay_checkpoint)

        def held(cfg, unit):
            return with_gradients(held_activations, cfg, unit)

        for unit in todo:
            acc_ref[0] = _Accumulator(np.zeros((L, F, S, 4)), np.zeros((B, S, 2)), seed=config.seeds[unit])
            step_state.reset()
            recorder.calls.clear()
            t0 = time.perf_counter()
            generate(pipe, config.conditions, config.seeds[unit], config.steps, config.guidance_scale, config.size)
            t1 = time.perf_counter()
            acc, acc_ref[0] = acc_ref[0], None  # pause the probes while the calls are replayed with gradients
            acc.prev.clear()  # the blocks' last outputs (a generation's worth of activations): not for the replay
            sens = None
            try:
                if decide is not None:
                    probe = UnitProbe(config, S, timings["setup"], t1 - t0,
                                      lambda _u=unit, _c=config, **kw: replay(replace(_c, **kw), _u),
                                      lambda _u=unit, _c=config, **kw: held(replace(_c, **kw), _u))
                    decided, forecast, sens = decide(probe)
                    _check_decided(config, decided)
                    config, decide = decided, None
                    writer = writer(config)
                    bar_ref[:] = _progress_bar(len(todo), S, progress, forecast)
                    bar_ref[0].update(S * bar_ref[1])  # this unit's steps, run before the bar
                if sens is None:
                    sens = replay(config, unit)
            finally:
                recorder.calls.clear()
            if bar_ref[2]:
                bar_ref[0].update(bar_ref[2])
            timings["generate"].append(t1 - t0)
            timings["replay"].append(time.perf_counter() - t1)
            rows = [(li, fi, s, *map(float, acc.stats[li, fi, s]))
                    for li, layer in enumerate(info.layers) for fi, f in enumerate(formats)
                    if fi > 0 and f in layer.eligible for s in range(S)]
            brows = [(bi, s, *map(float, acc.blocks[bi, s])) for bi in range(B) for s in range(1, S)]
            srows = [(li, s, float(sens[li, s, 0]), float(sens[li, s, 1])) for li in range(L) for s in range(S)]
            writer.write_unit(unit, time.perf_counter() - t0, rows, brows, srows)
    finally:
        if bar_ref[0] is not None:
            bar_ref[0].close()  # also on error, so an error message starts on a line of its own
        for h in handles:
            h.remove()
        recorder.remove()
