"""Compute budgets: bit operations (or measured seconds) per layer and format, and activation precision per
window of steps.

A compute budget is a second constraint beside memory (``Problem.extra``). Its cost per layer and format is,
by default, bit operations per denoiser call: ``MACs x weight bits x activation bits``, where a layer's
MACs per call come from one shape-recording forward (the tokens or pixels each layer processes) and the bits
from the format (``fp``: the model's dtype; a weight-only format keeps activations at the dtype's bits).
Or it is a latency table measured on the machine at hand (``mpsearch.profiling.latency``, ``mpsearch profile
--latency``): seconds per denoiser call of each layer in each format, with and without activation quantization.

Under a compute budget, activation precision is a choice too: a W8A8 or W4A4 layer may keep its
activations in full precision during some windows of steps (the plan's ``overrides``). That costs no bytes
(memory-neutral) but more bit operations (in a latency table: the weight-only module's measured time,
which on some devices is less), and lowers the error. Each such choice becomes a column of the
problem, a *variant* of the format: ``int8[a16:0-10]`` is int8 weights with full-precision activations
in steps 0 to 9. A variant's predicted error is the profile's error of the format with each fp-activation
window's share scaled by the ratio (weight-only error) / (weight-and-activation error), measured for that
layer, format and window in the same recording forward.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mpsearch.allocation.objective import resolve_metric, step_errors
from mpsearch.allocation.solvers import Constraint, Problem
from mpsearch.errors import InfeasibleError, UsageError
from mpsearch.formats import get_format
from mpsearch.models import ModelInfo
from mpsearch.profiling.latency import LatencyTable

# measured by the profiling stage; re-exported here, where compute budgets are decided
from mpsearch.profiling.layer_calls import LayerCalls, record_layer_calls, step_windows
from mpsearch.profiling.store import Profile

__all__ = ["LayerCalls", "ComputeModel", "record_layer_calls", "bit_ops", "compute_problem", "parse_compute",
           "step_windows"]


def _dtype_bits(dtype: str) -> int:
    return int(torch.finfo(getattr(torch, dtype)).bits)


def bit_ops(info: ModelInfo, macs: Sequence[float] | np.ndarray, fmt: str, act_quant: bool = True) -> np.ndarray:
    """(L,) bit operations per denoiser call of every layer in ``fmt`` (NaN where it may not take it);
    ``act_quant=False``: the format's weights with the dtype's activations."""

    F = get_format(fmt)
    out = np.full(len(info.layers), np.nan)
    for li, layer in enumerate(info.layers):
        if fmt not in layer.eligible:
            continue
        full = _dtype_bits(layer.dtype)
        wbits = full if fmt == info_fp_name() else F.bits
        abits = F.bits if (F.quantizes_activations and act_quant) else full
        out[li] = macs[li] * wbits * abits
    return out


def info_fp_name() -> str:
    """The full-precision format's name (the one whose weights keep the model's dtype)."""
    return "fp"


_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_compute(spec: object, full: float, unit: str = "bops") -> float:
    """``"50%"`` of ``full`` (full precision's cost), or an absolute figure: bit operations per denoiser call
    (``3.2e9``, ``unit="bops"``) or seconds per denoiser call (``12ms``, ``0.012s``, ``800us``, ``unit="s"``)."""
    text = str(spec).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(%|bops|s|ms|us|µs)?", text, re.IGNORECASE)
    suffix = m.group(2).lower() if m and m.group(2) else None
    if unit == "s":
        ok = m is not None and (suffix == "%" or suffix in _SECONDS)
        hint = "a share of full precision's latency (50%) or seconds per denoiser call (12ms, 0.012s, 800us)"
    else:
        ok = m is not None and suffix in (None, "%", "bops")
        hint = "a share of full precision (50%) or bit operations per denoiser call (3.2e9)"
    if m is None or not ok or float(m.group(1)) <= 0:
        raise UsageError(f"--compute {text!r} does not parse; use {hint}")
    if not math.isfinite(float(m.group(1))):
        raise UsageError(f"--compute {text!r} is not a finite number; use {hint}")
    value = float(m.group(1))
    if suffix == "%":
        return value / 100 * full
    if unit == "s":
        assert suffix is not None  # `ok` above: a seconds figure always carries its unit
        return value * _SECONDS[suffix]
    return value


@dataclass
class ComputeModel:
    """The problem with activation-window variants and the compute constraint, and how to read its answers.

    ``kind`` is the compute cost: ``"bops"`` (bit operations per denoiser call) or ``"latency"`` (seconds per
    denoiser call from a measured ``LatencyTable``); ``full`` is full precision's cost and ``limit`` the
    budget, in that unit (``unit``: ``"bops"`` or ``"s"``)."""

    problem: Problem
    variants: list[tuple[str, frozenset]]  # per column: (format, windows with fp activations)
    windows: list[tuple[int, int]]
    full: float
    limit: float
    info: dict = field(default_factory=dict)
    kind: str = "bops"

    @property
    def unit(self) -> str:
        """The unit of ``full`` and ``limit``: ``"s"`` for a latency cost, else ``"bops"``."""
        return "s" if self.kind == "latency" else "bops"

    def decode(self, choice: Sequence[int] | np.ndarray) -> tuple[dict, list]:
        """A per-layer choice -> (layer -> format, plan overrides for the fp-activation windows)."""
        names = self.problem.layer_names
        assignment: dict[str, str] = {}
        per_window: dict[int, dict[str, str]] = {w: {} for w in range(len(self.windows))}
        for name, c in zip(names, np.asarray(choice), strict=True):
            fmt, a16 = self.variants[int(c)]
            assignment[name] = fmt
            for w in sorted(a16):
                per_window[w][name] = "fp"
        overrides = [{"steps": list(self.windows[w]), "activations": acts} for w, acts in per_window.items() if acts]
        return assignment, overrides

    def encode(self, layers: dict, overrides: Sequence[dict] | None = ()) -> np.ndarray:
        """The inverse of ``decode``: a plan's layer formats and fp-activation overrides -> the column per layer."""
        fp_windows: dict[str, set] = {}
        for ov in overrides or ():
            w = self.windows.index(tuple(ov["steps"])) if tuple(ov["steps"]) in self.windows else None
            for name, mode in ov["activations"].items():
                if mode == "fp":
                    if w is None:
                        raise UsageError(f"override steps {ov['steps']} are not one of the windows {self.windows}")
                    fp_windows.setdefault(name, set()).add(w)
        try:
            return np.array([self.variants.index((layers[n], frozenset(fp_windows.get(n, ()))))
                             for n in self.problem.layer_names])
        except (KeyError, ValueError) as e:
            raise UsageError(f"the plan takes a choice the compute problem does not have ({e})") from None

    def value(self, choice: Sequence[int] | np.ndarray) -> float:
        """The predicted compute cost of a per-layer choice, in ``unit`` per denoiser call."""
        return float(self.problem.extra[-1].value(np.asarray(choice))) * self.full

    def predictions(self, choice: Sequence[int] | np.ndarray) -> dict:
        """The plan's compute predictions: which cost, the predicted value, the limit and full precision's."""
        key = "seconds" if self.kind == "latency" else "bops"
        out = {"compute_cost": self.kind, f"compute_{key}": self.value(choice), f"compute_limit_{key}": self.limit,
               f"compute_full_{key}": self.full, "compute_share": self.value(choice) / self.full}
        if self.kind == "latency":
            out["compute_device"] = self.info.get("device")
        return out


def _cost_columns(info, calls: LayerCalls, formats, cost) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per format: (L,) cost as the format runs and (L,) with the activations kept in full precision."""
    if isinstance(cost, str):
        if cost != "bops":
            raise UsageError(f"compute cost {cost!r} is not known; use bops, or pass a measured LatencyTable "
                             "(--compute-cost latency)")
        return {f: (bit_ops(info, calls.macs, f, True), bit_ops(info, calls.macs, f, False)) for f in formats}

    if not isinstance(cost, LatencyTable):
        raise UsageError(f"the compute cost must be 'bops' or a LatencyTable, got {type(cost).__name__}")
    if tuple(cost.names) != tuple(info.names):
        raise UsageError("the latency table was measured on another model (other layers); measure it on the "
                         "profiled model with `mpsearch profile --latency`")
    missing = [f for f in formats if f not in cost.formats]
    if missing:
        raise UsageError(f"the latency table has no times for {', '.join(missing)}; measure it again with "
                         "`mpsearch profile --latency` on a profile of those formats")
    out = {}
    for f in formats:
        quant = cost.column(f)
        wo = cost.column(f, weight_only=True) if get_format(f).quantizes_activations else quant
        for li, layer in enumerate(info.layers):
            if f in layer.eligible and not np.isfinite(quant[li]):
                raise UsageError(f"the latency table has no time for layer {layer.name} in {f}; measure it again "
                                 "with `mpsearch profile --latency`")
        out[f] = (quant, wo)
    return out


def compute_problem(profile: Profile, base: Problem, calls: LayerCalls, compute: object, *, metric: str = "auto",
                    variants: bool = True, cost: str | LatencyTable = "bops") -> ComputeModel:
    """``base`` (from ``objective.build_problem``) with a compute budget ``compute`` (``"50%"`` of full precision,
    or an absolute figure) and, with ``variants``, a column per (format, set of windows whose activations stay
    fp). ``cost``: ``"bops"`` (bit operations, from ``calls``) or a measured ``latency.LatencyTable`` (seconds
    per denoiser call; ``"12ms"`` is then an absolute budget). A column's cost is the format's cost with
    quantized activations x (1 - share of steps with fp activations) + its weight-only cost x that share."""


    info = profile.info
    metric = resolve_metric(profile, metric)
    if tuple(calls.names) != tuple(info.names):
        raise UsageError("the recorded layer calls belong to another model; record them on the profiled model")
    kind = "bops" if isinstance(cost, str) and cost == "bops" else "latency"
    per_format = _cost_columns(info, calls, base.formats, cost)
    W = len(calls.windows)
    share = _window_shares(profile, metric, calls.windows)  # (L, F, W)
    columns: list[tuple[str, frozenset]] = []
    for f in base.formats:
        columns.append((f, frozenset()))
        if variants and get_format(f).quantizes_activations and f in calls.formats:
            for r in range(1, W + 1):
                columns.extend((f, frozenset(c)) for c in itertools.combinations(range(W), r))
    L = base.n_layers
    steps = calls.windows[-1][1]
    frac = np.array([(b - a) / steps for a, b in calls.windows])
    err = np.full((L, len(columns)), np.inf)
    nbytes = np.zeros((L, len(columns)), dtype=np.int64)
    compute_cost = np.zeros((L, len(columns)))
    for j, (f, a16) in enumerate(columns):
        fi = base.formats.index(f)
        nbytes[:, j] = base.nbytes[:, fi]
        quant, wo = per_format[f]
        mix = np.array([frac[w] * (1.0 if w in a16 else 0.0) for w in range(W)]).sum()
        compute_cost[:, j] = np.nan_to_num(quant * (1 - mix) + wo * mix)
        scale = np.ones((L, W))
        if a16:
            ai = calls.formats.index(f)
            for w in a16:
                scale[:, w] = np.nan_to_num(calls.ratio[:, ai, w], nan=1.0)
        c = base.cost[:, fi] * (share[:, fi, :] * scale).sum(axis=1)
        err[:, j] = np.where(np.isfinite(base.cost[:, fi]), np.maximum(c, 0.0), np.inf)
    if columns[0][0] == info_fp_name():
        full = float(compute_cost[:, 0].sum())
    else:
        full = float(np.where(np.isfinite(err), compute_cost, 0.0).max(axis=1).sum())
    if not full > 0:
        raise UsageError(f"full precision's compute cost is {full:g}, so a share of it means nothing; give an "
                         "absolute --compute or measure again")
    limit = parse_compute(compute, full, "s" if kind == "latency" else "bops")
    pins = {l: columns.index((base.formats[f], frozenset())) for l, f in base.pins.items()}
    _check_reachable(compute, kind, compute_cost, err, pins, full, limit, cost)
    problem = Problem(base.layer_names, tuple(_column_name(f, s, calls.windows) for f, s in columns), err, nbytes,
                      fixed_bytes=base.fixed_bytes, budget_bytes=base.budget_bytes, groups=base.groups, pins=pins,
                      extra=(*base.extra, Constraint("compute", compute_cost / full, limit / full)))
    extra = {"macs_per_call": float(calls.macs.sum()), "windows": [list(w) for w in calls.windows]}
    if kind == "latency" and not isinstance(cost, str):  # kind is "latency" exactly when cost is a table
        extra.update(device=cost.device, torch=cost.meta.get("torch"), threads=cost.meta.get("threads"),
                     measured_at=cost.meta.get("measured_at"))
    return ComputeModel(problem, columns, list(calls.windows), full, limit, extra, kind)


def _check_reachable(spec, kind, compute_cost, err, pins, full, limit, table) -> None:
    """A compute budget below the least any allowed assignment costs is an error that says that least."""

    allowed = np.isfinite(err)
    for l, j in pins.items():
        allowed[l] = False
        allowed[l, j] = True
    least = float(np.where(allowed, compute_cost, np.inf).min(axis=1).sum())
    if least <= limit * (1 + 1e-9):
        return
    if kind == "latency":
        what = (f"{least * 1e3:.4g} ms per denoiser call ({least / full:.1%} of full precision's "
                f"{full * 1e3:.4g} ms) in the latency table measured on {table.device}")
        hint = ("; on this device the quantized modules are no faster than fp for these layers"
                if least >= full * (1 - 1e-9) else "")
    else:
        what, hint = f"{least:.4g} bit operations per denoiser call ({least / full:.1%} of full precision)", ""
    raise InfeasibleError(f"--compute {spec} is below the least compute any allowed plan needs: {what}{hint}; "
                          "raise --compute to at least that (pins and ineligible formats included)")


def _column_name(fmt: str, a16: frozenset, windows) -> str:
    if not a16:
        return fmt
    return f"{fmt}[a16:" + ",".join(f"{windows[w][0]}-{windows[w][1]}" for w in sorted(a16)) + "]"


def _window_shares(profile, metric: str, windows) -> np.ndarray:
    """(L, F, W): each window's share of a layer's error over the steps (uniform where the error is 0)."""
    err = np.clip(np.nan_to_num(step_errors(profile, metric), nan=0.0), 0.0, None)
    parts = np.stack([err[..., a:b].sum(-1) for a, b in windows], axis=-1)
    total = parts.sum(-1, keepdims=True)
    even = np.broadcast_to(np.array([(b - a) for a, b in windows], float) / windows[-1][1], parts.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, parts / np.where(total > 0, total, 1.0), even)
