"""Know before you run: predict a whole profile's time and peak memory from a one-step, one-unit profile.

The probes are built once (``setup``: the sampled channels' quantized copies), then each unit runs a probed
generation (cost proportional to its steps) and replays the denoiser's calls of the replayed steps with
gradients. A one-step, one-unit profile of the same conditions measures the three, and the prediction is
``setup + units x (steps x generate + replayed steps x replay)``. The peak is the one-step run's peak (the
profile holds the same probes at every step) plus the recorded inputs of the extra denoiser calls. Peak
memory is sampled RSS on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mpsearch.models import get_denoiser
from mpsearch.profiling.profiler import ProfileConfig, profile_local
from mpsearch.profiling.sensitivity import replayed_steps

__all__ = ["estimate_profile"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def release_free_memory() -> None:
    """Give the memory the C allocator holds free back to the system (glibc's ``malloc_trim``; elsewhere
    nothing), so that the resident set, which peaks are measured in, counts what is in use. Changes no
    tensor."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class PeakRSS:
    """Samples the process's resident set every few milliseconds while active (no side effect on it)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def estimate_profile(pipe, config: ProfileConfig | None = None, **options) -> dict:
    """Predicted ``seconds`` and ``peak_bytes`` of ``profile_local(pipe, config)`` (one shard, from scratch),
    from a one-step profile of one unit of the same conditions, run here into a temporary file."""
    progress = options.pop("progress", False)
    if config is None:
        config = ProfileConfig(**options)
    elif options:
        config = ProfileConfig(**{**asdict(config), **options})
    probe_cfg = ProfileConfig(**{**asdict(config), "steps": 1, "seeds": config.seeds[:1], "replay_steps": None})
    device = next(get_denoiser(pipe).parameters()).device
    timings: dict = {}
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as d:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            profile_local(pipe, probe_cfg, out=Path(d) / "estimate.sqlite", progress=progress, timings=timings)
        measured = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if cuda else rss.peak
    steps, units = config.steps, len(config.seeds)
    per_step, replay = timings["generate"][0], timings["replay"][0]
    overhead = measured - timings["setup"] - per_step - replay  # file, model checks: once per profile
    n_replay = len(replayed_steps(steps, config.replay_steps))
    seconds = overhead + timings["setup"] + units * (steps * per_step + n_replay * replay)
    return {"seconds": seconds, "peak_bytes": int(peak), "device": str(device), "measured_seconds": measured,
            "setup_seconds": timings["setup"], "step_seconds": per_step, "replay_seconds": replay,
            "steps": steps, "units": units, "replayed_steps": n_replay}
