"""Apply a plan to a pipeline: packed low-bit weights, run-time activation quantization, removable.

``apply_plan`` replaces each planned layer by a quantized module that holds only the packed weight (the
full-precision weight is moved off the model to a stash: a safetensors file in :func:`stash_dir` for a model on
the CPU, host memory for a model on an accelerator), so the denoiser's parameters and buffers take exactly
``plan.predicted_bytes``. ``handle.remove()`` puts the original modules and weights back, bit for bit; the
handle is also a context manager (``with apply_plan(pipe, plan): ...`` restores on leaving the block).
"""

from __future__ import annotations

import os
import re
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from mpsearch.errors import PlanError
from mpsearch.formats.kernel_errors import is_out_of_memory
from mpsearch.io import process_alive
from mpsearch.models import describe, get_denoiser, measured_bytes
from mpsearch.offload import has_offloaded_weights
from mpsearch.plan import Plan
from mpsearch.quantizers import quantize_candidate
from mpsearch.runtime.install import Installed, cache_config, install
from mpsearch.runtime.qmodules import QuantConv2d, QuantLinear

_HANDLE_ATTR = "_mpsearch_plan_handle"
#: the environment variable that chooses the folder of disk stashes (see :func:`stash_dir`)
STASH_DIR_ENV = "MPSEARCH_STASH_DIR"
_STASH_PREFIX = "mpsearch-stash-"
_STASH_NAME = re.compile(r"^mpsearch-stash-(\d+)-.*\.safetensors$")


@dataclass(frozen=True)
class LayerReport:
    name: str
    format: str
    bytes_before: int
    bytes_after: int


def stash_dir() -> Path:
    """Where disk stashes live: ``$MPSEARCH_STASH_DIR`` if set, else ``$XDG_CACHE_HOME/mpsearch/stash`` (default
    ``~/.cache/mpsearch/stash``)."""
    env = os.environ.get(STASH_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "mpsearch" / "stash"


def remove_stale_stashes(folder: Path) -> list[Path]:
    """Delete the stash files in ``folder`` whose owning process (the pid in the name) is gone; returns them."""
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        m = _STASH_NAME.match(path.name)
        if m and int(m.group(1)) != os.getpid() and not process_alive(int(m.group(1))):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


class _Stash:
    """Holds full-precision weights while a plan is applied: on disk (safetensors, in :func:`stash_dir`, named
    with the owner's pid) or in host memory. ``take()`` gives each weight back in its original layout."""

    def __init__(self, mode: str):
        self.mode = mode
        self.path: str = ""
        self.memory: dict[str, torch.Tensor] = {}
        self.devices: dict[str, torch.device] = {}
        self.layouts: dict[str, tuple] = {}  # name -> (shape, strides, dtype)

    def put(self, tensors: dict[str, torch.Tensor]) -> None:
        self.devices = {k: t.device for k, t in tensors.items()}
        # shape, strides and dtype of each weight (also a non-dense view's): take() rebuilds this layout
        self.layouts = {k: (tuple(t.shape), t.stride(), t.dtype) for k, t in tensors.items()}
        if self.mode == "disk":
            from safetensors.torch import save_file

            folder = stash_dir()
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                remove_stale_stashes(folder)  # left by processes killed while a plan was applied
                fd, self.path = tempfile.mkstemp(prefix=f"{_STASH_PREFIX}{os.getpid()}-", suffix=".safetensors",
                                                 dir=folder)
            except OSError as e:
                raise PlanError(f"cannot create a weight stash in {folder}: {e.strerror or e}; set {STASH_DIR_ENV} "
                                "to a writable folder with room for the model's weights, "
                                "or pass stash='memory'") from None
            os.close(fd)
            # never leave the file behind: deleted on remove(), or when the stash is collected or Python exits
            self._finalizer = weakref.finalize(self, _unlink, self.path)
            save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, self.path)
        else:
            self.memory = {k: t.detach().to("cpu", copy=True) if t.device.type != "cpu" else t.detach()
                           for k, t in tensors.items()}

    def _relaid(self, k: str, t: torch.Tensor) -> torch.Tensor:
        """``t``'s values in fresh, aligned memory on the original device with the original strides."""
        shape, strides, dtype = self.layouts[k]
        return torch.empty_strided(shape, strides, dtype=dtype, device=self.devices[k]).copy_(t)

    def take(self) -> dict[str, torch.Tensor]:
        if self.mode == "disk":
            from safetensors.torch import load_file

            # load_file's tensors are contiguous views of a private mmap of the (soon deleted) file, only 8-byte
            # aligned: copy each into fresh memory laid out like the original weight (same strides). An
            # 8-byte-aligned weight changes the CPU GEMV kernel's rounding (batch-1 linears), so generations would
            # differ by float ULPs after remove() although the state_dict is bit-identical.
            loaded = load_file(self.path)
            out = {k: self._relaid(k, t) for k, t in loaded.items()}
            del loaded
            self.discard()
            return out
        out, self.memory = self.memory, {}
        return {k: t if t.device == self.devices[k] else self._relaid(k, t) for k, t in out.items()}

    def discard(self) -> None:
        if self.path:
            _unlink(self.path)
        self.path = ""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def applied_plan(pipe_or_model) -> PlanHandle | None:
    """The handle of the plan applied to the pipeline's denoiser (or module), or None if none is applied."""
    return getattr(get_denoiser(pipe_or_model), _HANDLE_ATTR, None)


class PlanHandle:
    """What ``apply_plan`` returns: a per-layer ``report``, ``cache`` (the feature-cache handle, or None) and
    ``remove()``, which restores the model. A context manager: leaving a ``with`` block calls ``remove()``, also
    when the block raises."""

    def __init__(self, denoiser, installed: Installed, stash, report):
        self._denoiser = denoiser
        self._installed = installed
        self._stash = stash
        self.report: list[LayerReport] = report
        self.removed = False

    @property
    def step_state(self):
        """The denoiser's step state while activation windows need it, else None."""
        return self._installed.step_state

    @property
    def cache(self):
        """The feature-cache handle (``state`` holds its counters), or None."""
        return self._installed.cache

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.report)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.report)

    def remove(self) -> None:
        """Restore the original modules and weights, bit for bit. Safe to call twice."""
        if self.removed:
            return
        weights = self._stash.take() if self._installed.swaps else None
        self._installed.uninstall(weights)
        if getattr(self._denoiser, _HANDLE_ATTR, None) is self:
            delattr(self._denoiser, _HANDLE_ATTR)
        self.removed = True

    def __enter__(self) -> PlanHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def activation_windows(plan: Plan) -> dict[str, list]:
    """Per layer, the plan's activation overrides as ``(start, stop, quantize)`` step windows."""
    return {name: list(ws) for name, ws in plan.activation_windows().items()}


def apply_plan(pipe_or_model, plan: Plan, *, stash: str = "auto", ignore_weights: bool = False) -> PlanHandle:
    """Apply ``plan`` to a pipeline's denoiser (or to the module itself) and return a removable handle, also a
    context manager (``with apply_plan(pipe, plan): ...`` restores the model on leaving the block).

    ``stash`` says where the full-precision weights wait until ``remove()``: ``"disk"`` (a safetensors file in
    :func:`stash_dir`), ``"memory"`` (host RAM), or ``"auto"`` (disk for a CPU model, host RAM otherwise).
    A plan that records the weights it was made from (``plan.weights``) is refused for other weights unless
    ``ignore_weights=True`` (CLI: ``--ignore-weights``). The model is either fully planned or, if anything fails,
    left untouched.
    """
    if not isinstance(plan, Plan):
        raise PlanError(f"apply_plan expects a mpsearch.Plan, got {type(plan).__name__}; use Plan.load(path)")
    denoiser = get_denoiser(pipe_or_model)
    if getattr(denoiser, _HANDLE_ATTR, None) is not None:
        raise PlanError("a plan is already applied to this model; call handle.remove() before applying another")
    if has_offloaded_weights(denoiser):
        raise PlanError("the denoiser's weights are offloaded by accelerate (enable_sequential_cpu_offload, or a "
                        "device_map with cpu/disk entries), which apply_plan cannot quantize or restore; apply the "
                        "plan without it and use pipe.enable_model_cpu_offload() if the planned model must be "
                        "offloaded")
    info = describe(denoiser)
    plan.check_model(info)
    plan.check_calibration()
    if not ignore_weights:
        plan.check_weights(denoiser, info)
    config = cache_config(plan)
    if config is not None:  # checked before any change: the unit's modules must exist
        config.unit.check(denoiser)
    if stash not in ("auto", "disk", "memory"):
        raise PlanError(f"stash must be auto, disk or memory; got {stash!r}; pass one of those")
    modules = dict(denoiser.named_modules())

    # 1. quantize everything first: a failure here leaves the model untouched
    packed, report = {}, []
    for a in plan.assignments:
        module = modules[a.name]
        before = info.layer(a.name).nbytes("fp")
        if a.format == "fp":
            report.append(LayerReport(a.name, "fp", before, before))
            continue
        try:
            packed[a.name] = quantize_candidate(a.format, module.weight.detach(), plan.calibration.get(a.name))
        except Exception as e:  # noqa: BLE001 - re-raised with the layer's name
            if is_out_of_memory(e):  # not a problem of the plan: the caller may free memory and retry
                raise
            raise PlanError(f"cannot quantize layer {a.name!r} to {a.format}: {e}") from None
        report.append(LayerReport(a.name, a.format, before, packed[a.name].nbytes))
    originals = {name: modules[name] for name in packed}
    device_types = {m.weight.device.type for m in originals.values()}
    mode = stash if stash != "auto" else ("disk" if device_types <= {"cpu"} else "memory")
    store = _Stash(mode)
    store.put({name: m.weight for name, m in originals.items()})

    # 2. swap modules in (with step state and cache hooks); free the full-precision weights
    installed = None
    try:
        installed = install(denoiser, plan, packed)  # all or nothing
        for m in originals.values():
            m.weight.data = torch.empty(0, dtype=m.weight.dtype, device=m.weight.device)
        handle = PlanHandle(denoiser, installed, store, report)
    except BaseException:
        if installed is not None:
            installed.uninstall(store.take())
        store.discard()
        raise
    setattr(denoiser, _HANDLE_ATTR, handle)
    return handle


__all__ = ["apply_plan", "applied_plan", "PlanHandle", "LayerReport", "QuantLinear", "QuantConv2d", "measured_bytes",
           "stash_dir", "STASH_DIR_ENV"]
