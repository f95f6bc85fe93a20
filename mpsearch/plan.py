"""The runtime plan: per-layer formats, per-step activation overrides, cache schedule, budget, predictions.

A plan is a strict, versioned YAML file. Loading refuses unknown keys, unknown formats, a wrong
``schema_version``, numbers out of range (or NaN/inf) and free-form sections that are not small, plain data;
applying refuses layers the model does not have, layers of the model the plan does not list and a fingerprint
mismatch. :class:`Plan` keeps each section as it is written (``to_dict`` gives the file back byte for byte) and
parses it once into typed records (:class:`LayerAssignment`, :class:`ActivationOverride`, :class:`CacheSection`,
:class:`Predictions`), which the runtime installs (``mpsearch.runtime.install``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib
import importlib.metadata
import math
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mpsearch.cache_section import validate_cache_section
from mpsearch.cache_units import CacheUnit
from mpsearch.errors import ModelError, PlanError
from mpsearch.formats import available_formats
from mpsearch.formats.variant import split_candidate
from mpsearch.io import StrPath, atomic_write_text, dump_yaml, load_yaml
from mpsearch.models import ModelInfo, describe, same_weights, weights_digest
from mpsearch.quantizers.calibration_file import calibration_path, load_calibration, save_calibration
from mpsearch.version import __version__

SCHEMA_VERSION = 1
_TOP_KEYS = ("schema_version", "model", "budget", "layers", "overrides", "cache", "predictions", "provenance",
             "calibration")
_MODEL_KEYS = ("class", "fingerprint")
_MODEL_OPTIONAL_KEYS = ("weights",)  # added within schema 1: plans without it still load
_REGEN = "fix the file or regenerate it with `mpsearch solve`"
_OVERRIDE_KEYS = ("steps", "activations")
_BUDGET_KEYS = ("spec", "bytes")  # what budget.Budget.to_dict writes
#: no sampler runs this many denoising steps: a larger step index in a plan is a typo or a damaged file
MAX_STEPS = 100_000
#: an upper bound on any byte count a plan predicts (1 EiB): anything above is not a real model
MAX_BYTES = 2**60
#: how deep and how large ``provenance`` (and other free-form sections) may be: plain, bounded data
MAX_DEPTH = 16
MAX_NODES = 100_000


def _library_version(name: str) -> str:
    """``name.__version__``; read from the installed distribution when ``name`` is not imported yet (importing
    diffusers takes seconds, and a plan solved from a profile needs no pipeline)."""
    module = sys.modules.get(name)
    if module is None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # not installed as a distribution, and not imported
            return "unknown"
    return str(module.__version__)


def versions() -> dict:
    """Versions of mpsearch and of the libraries that decide its numbers."""
    return {"mpsearch": str(__version__), "torch": _library_version("torch"),
            "diffusers": _library_version("diffusers"), "python": platform.python_version()}


# ---- typed records: the plan's sections, parsed and validated once (Plan.__post_init__)


def _int(value: object, where: str, lo: int, hi: int) -> int:
    """``value`` if it is an integer (not a bool) in [lo, hi], else a one-line PlanError."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PlanError(f"{where} must be an integer in [{lo}, {hi:,}], got {value!r}; {_REGEN}")
    return value


def check_plain_data(value: object, where: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Raise PlanError unless ``value`` is plain data (mappings with string keys, lists, strings, finite numbers,
    booleans, None) at most ``max_depth`` deep and ``max_nodes`` values large. Shared sub-objects count once per
    reference, so a structure that would expand when written out is refused, not expanded."""
    count = 0
    stack = [(value, where, 0)]
    while stack:
        v, path, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise PlanError(f"{where} holds more than {max_nodes:,} values; expected a small record of how the plan "
                            f"was made; {_REGEN}")
        if depth > max_depth:
            raise PlanError(f"{path} is nested more than {max_depth} levels deep; expected a small record; {_REGEN}")
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise PlanError(f"{path} has the key {k!r}; expected string keys; {_REGEN}")
                stack.append((item, f"{path}.{k}", depth + 1))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise PlanError(f"{path} is {v!r}; expected a finite number; {_REGEN}")
        elif v is not None and not isinstance(v, (str, int, bool)):
            raise PlanError(f"{path} is a {type(v).__name__}; expected plain data (mappings, lists, strings, "
                            f"numbers); {_REGEN}")


@dataclass(frozen=True)
class LayerAssignment:
    """One layer's format, by exact module name."""

    name: str
    format: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not isinstance(self.format, str):
            raise PlanError(f"plan layer entry {self.name!r}: {self.format!r} must map a module name to a format "
                            f"name; {_REGEN}")
        known = available_formats(calibrated=True)
        if self.format not in known:
            raise PlanError(f"plan layer {self.name!r} has unknown format {self.format!r}; expected one of "
                            f"{', '.join(sorted(known))}")


class ActivationWindow(NamedTuple):
    """Steps ``[start, stop)`` in which a layer's activations are quantized (``quantize``) or kept in fp."""

    start: int
    stop: int
    quantize: bool


@dataclass(frozen=True)
class ActivationOverride:
    """One ``overrides`` entry: in steps ``[start, stop)``, these layers' activations are fp or quant."""

    start: int
    stop: int
    activations: tuple[tuple[str, str], ...]
    where: str = field(default="plan override", compare=False, repr=False)

    def __post_init__(self) -> None:
        for v in (self.start, self.stop):
            if isinstance(v, bool) or not isinstance(v, int):
                raise PlanError(f"{self.where}.steps must be two integers [start, stop); got "
                                f"{[self.start, self.stop]!r}; {_REGEN}")
        if not 0 <= self.start < self.stop <= MAX_STEPS:
            raise PlanError(f"{self.where}.steps must be [start, stop) step indices with 0 <= start < stop <= "
                            f"{MAX_STEPS:,}; got {[self.start, self.stop]!r}; {_REGEN}")
        for name, mode in self.activations:
            if not isinstance(name, str):
                raise PlanError(f"{self.where}.activations has the key {name!r}; expected layer names; {_REGEN}")
            if mode not in ("fp", "quant"):
                raise PlanError(f"{self.where} sets layer {name!r} activations to {mode!r}; expected fp or quant")

    @classmethod
    def from_dict(cls, ov: object, where: str = "plan override") -> ActivationOverride:
        """The override an ``overrides`` entry ``ov`` describes; PlanError naming ``where`` when it is malformed."""
        if not isinstance(ov, dict) or set(ov) != set(_OVERRIDE_KEYS):
            raise PlanError(f"{where} must have exactly the keys steps and activations; got {ov!r}; {_REGEN}")
        steps, acts = ov["steps"], ov["activations"]
        if not isinstance(steps, list) or len(steps) != 2:
            raise PlanError(f"{where}.steps must be [start, stop) step indices with 0 <= start < stop; got "
                            f"{steps!r}; {_REGEN}")
        if not isinstance(acts, dict):
            raise PlanError(f"{where}.activations must map layer names to fp or quant; got {acts!r}; {_REGEN}")
        return cls(steps[0], steps[1], tuple(acts.items()), where)

    def to_dict(self) -> dict:
        """The plan's ``overrides`` entry: ``{steps: [start, stop], activations: {layer: fp|quant}}``."""
        return {"steps": [self.start, self.stop], "activations": dict(self.activations)}


@dataclass(frozen=True)
class CacheSection:
    """The plan's ``cache`` section (schema: mpsearch/cache_section.py): the reused unit and, per step, whether it
    is computed (True) or reused (False)."""

    method: str
    unit: CacheUnit
    compute: tuple[bool, ...]
    warmup: int = 1
    max_reuse: int | None = None
    costs: str = "measured"
    predicted_error: float | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.unit, CacheUnit):
            raise PlanError(f"plan cache.unit must be a CacheUnit, got {type(self.unit).__name__}")
        if not 0 < len(self.compute) <= MAX_STEPS:
            raise PlanError(f"plan cache.compute must list 1 to {MAX_STEPS:,} steps, got {len(self.compute):,}; "
                            f"{_REGEN}")
        for key in ("predicted_error", "share"):
            v = getattr(self, key)
            if v is not None and not math.isfinite(v):
                raise PlanError(f"plan cache.{key} is {v!r}; expected a finite number or null; {_REGEN}")

    @classmethod
    def from_dict(cls, cache: Any) -> CacheSection:
        """The section a plan's ``cache`` mapping describes (validated: PlanError naming the field)."""
        validate_cache_section(cache)
        return cls(method=cache["method"], unit=CacheUnit.from_dict(cache["unit"], "plan cache.unit"),
                   compute=tuple(cache["compute"]), warmup=cache.get("warmup", 1), max_reuse=cache.get("max_reuse"),
                   costs=cache.get("costs", "measured"), predicted_error=cache.get("predicted_error"),
                   share=cache.get("share"))


@dataclass(frozen=True)
class Predictions:
    """What the solver predicted: the denoiser's bytes after the plan (``bytes``), the bytes that stay unquantized
    (``fixed_bytes``) and the full-precision bytes (``fp_bytes``); None where not recorded."""

    bytes: int | None = None
    fixed_bytes: int | None = None
    fp_bytes: int | None = None

    def __post_init__(self) -> None:
        for key in ("bytes", "fixed_bytes", "fp_bytes"):
            v = getattr(self, key)
            if v is not None:
                _int(v, f"plan predictions.{key}", 0, MAX_BYTES)

    @classmethod
    def from_dict(cls, predictions: dict) -> Predictions:
        """The predictions of a plan's ``predictions`` mapping (keys other than the byte counts are ignored)."""
        return cls(**{k: predictions[k] for k in ("bytes", "fixed_bytes", "fp_bytes") if k in predictions})


@dataclass(frozen=True)
class PlanRecords:
    """A plan's sections as typed records (what the runtime installs)."""

    layers: tuple[LayerAssignment, ...]
    overrides: tuple[ActivationOverride, ...]
    cache: CacheSection | None
    predictions: Predictions

    def activation_windows(self) -> dict[str, tuple[ActivationWindow, ...]]:
        """Per layer, its activation overrides as step windows, in the plan's order."""
        out: dict[str, list[ActivationWindow]] = {}
        for ov in self.overrides:
            for name, mode in ov.activations:
                out.setdefault(name, []).append(ActivationWindow(ov.start, ov.stop, mode == "quant"))
        return {k: tuple(v) for k, v in out.items()}


def _parse_layers(layers: object) -> tuple[LayerAssignment, ...]:
    if not isinstance(layers, dict) or not layers:
        raise PlanError(f"plan 'layers' must be a non-empty mapping of module name to format; {_REGEN}")
    return tuple(LayerAssignment(name, fmt) for name, fmt in layers.items())


def _parse_overrides(source: tuple[object, dict[str, str]]) -> tuple[ActivationOverride, ...]:
    overrides, layers = source
    if not isinstance(overrides, list):
        raise PlanError("plan 'overrides' must be a list of {steps: [start, stop], activations: {layer: fp|quant}}")
    parsed = []
    for i, ov in enumerate(overrides):
        rec = ActivationOverride.from_dict(ov, f"plan overrides[{i}]")
        for name, _ in rec.activations:
            if name not in layers:
                raise PlanError(f"plan overrides[{i}] names layer {name!r}, which the plan does not list; {_REGEN}")
        parsed.append(rec)
    return tuple(parsed)


def _parse_cache(cache: object) -> CacheSection | None:
    return None if cache is None else CacheSection.from_dict(cache)


def _parse_predictions(predictions: object) -> Predictions:
    if not isinstance(predictions, dict):
        raise PlanError(f"plan 'predictions' must be a mapping, got {type(predictions).__name__}")
    if "bytes" in predictions and (isinstance(predictions["bytes"], bool) or not isinstance(predictions["bytes"], int)):
        raise PlanError(f"plan predictions.bytes must be an integer, got {predictions['bytes']!r}; {_REGEN}")
    return Predictions.from_dict(predictions)


def _parse_budget(budget: object) -> dict | None:
    """The ``budget`` section checked: None, or ``{spec: what the user wrote, bytes: the exact bytes}``."""
    if budget is None:
        return None
    if not isinstance(budget, dict):
        raise PlanError(f"plan 'budget' must be a mapping with keys {', '.join(_BUDGET_KEYS)}, got "
                        f"{type(budget).__name__}; {_REGEN}")
    unknown = [k for k in budget if k not in _BUDGET_KEYS]
    if unknown:
        raise PlanError(f"plan budget has unknown key {unknown[0]!r}; allowed keys: {', '.join(_BUDGET_KEYS)}; "
                        f"{_REGEN}")
    if "bytes" not in budget:
        raise PlanError(f"plan budget lacks the key 'bytes' (the budget in bytes); {_REGEN}")
    _int(budget["bytes"], "plan budget.bytes", 1, MAX_BYTES)
    if "spec" in budget and not isinstance(budget["spec"], str):
        raise PlanError(f"plan budget.spec must be the budget as written (a string such as '60%' or '4GB'), got "
                        f"{budget['spec']!r}; {_REGEN}")
    return budget


#: each typed section: how to get its source from a plan, and its one parser
_PARSERS = {
    "budget": (lambda p: p.budget, _parse_budget),
    "layers": (lambda p: p.layers, _parse_layers),
    "overrides": (lambda p: (p.overrides, p.layers), _parse_overrides),
    "cache": (lambda p: p.cache, _parse_cache),
    "predictions": (lambda p: p.predictions, _parse_predictions),
}


def _is_schema_version(value: object) -> bool:
    """Whether ``value`` is this mpsearch's schema version: the integer itself, not ``true`` or ``1.0`` (which
    Python counts equal to 1)."""
    return type(value) is int and value == SCHEMA_VERSION


@dataclass
class Plan:
    """One runtime plan for one denoiser (see docs/design.md, The plan file)."""

    model_class: str
    fingerprint: str
    layers: dict[str, str]
    budget: dict | None = None
    overrides: list[dict] = field(default_factory=list)
    cache: dict | None = None
    predictions: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    #: digest of the weights the plan was made from (``models.weights_digest``); None: not recorded
    weights: str | None = None
    #: layer name -> :class:`mpsearch.quantizers.Calibration` of the layers in a calibrated variant
    #: (``nvfp4:clip``): what their codes are made from. Saved beside the plan file (its ``calibration`` key)
    calibration: dict = field(default_factory=dict, repr=False, compare=False)

    _parsed: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    #: why the calibration file named by a loaded plan could not be read (raised by :meth:`check_calibration`)
    _calibration_error: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _is_schema_version(self.schema_version):
            raise PlanError(f"plan schema_version is {self.schema_version!r}, this mpsearch reads {SCHEMA_VERSION} "
                            "(an integer); regenerate the plan with `mpsearch solve`")
        for key in _PARSERS:
            self._record(key)
        for key in ("budget", "predictions", "provenance"):
            check_plain_data(getattr(self, key), f"plan {key}")
        if self.weights is not None and not isinstance(self.weights, str):
            raise PlanError(f"plan model.weights must be a digest string, got {self.weights!r}; {_REGEN}")
        if not isinstance(self.calibration, dict):
            raise PlanError(f"plan calibration must map layer names to calibrations, got "
                            f"{type(self.calibration).__name__}")

    def calibrated_layers(self) -> list[str]:
        """The layers the plan puts in a calibrated quantizer variant (``nvfp4:clip``, ...)."""
        return [a.name for a in self.assignments if split_candidate(a.format)[1] is not None]

    def check_calibration(self) -> None:
        """PlanError unless every layer in a calibrated variant has its calibration."""
        missing = [n for n in self.calibrated_layers() if n not in self.calibration]
        if missing and self._calibration_error:
            raise PlanError(self._calibration_error)
        if missing:
            raise PlanError(f"the plan puts {len(missing)} layer(s) in calibrated variants (e.g. {missing[0]!r}: "
                            f"{self.layers[missing[0]]}) but holds no calibration for them; load it with "
                            "mpsearch.Plan.load from its file (with its .calibration.safetensors beside it), or "
                            "solve again")

    def _record(self, key: str) -> Any:
        """The typed record of section ``key``: parsed once, and again only if the section was edited since."""
        source_of, parse = _PARSERS[key]
        source = source_of(self)
        cached = self._parsed.get(key)
        if cached is not None and cached[0] == source:
            return cached[1]
        record = parse(source)
        self._parsed[key] = (copy.deepcopy(source), record)
        return record

    @property
    def assignments(self) -> tuple[LayerAssignment, ...]:
        """Each layer's format, as typed records, in the plan's order."""
        return self._record("layers")

    @property
    def activation_overrides(self) -> tuple[ActivationOverride, ...]:
        """The ``overrides`` section as typed records."""
        return self._record("overrides")

    @property
    def cache_section(self) -> CacheSection | None:
        """The ``cache`` section as a typed record, or None."""
        return self._record("cache")

    @property
    def predicted(self) -> Predictions:
        """The byte counts of ``predictions`` as a typed record."""
        return self._record("predictions")

    @property
    def records(self) -> PlanRecords:
        """Every section as typed, validated records (what the runtime installs)."""
        return PlanRecords(self.assignments, self.activation_overrides, self.cache_section, self.predicted)

    def activation_windows(self) -> dict[str, tuple[ActivationWindow, ...]]:
        """Per layer, the plan's activation overrides as ``(start, stop, quantize)`` step windows."""
        return PlanRecords(self.assignments, self.activation_overrides, None, Predictions()).activation_windows()

    # ---- what a plan says

    @property
    def predicted_bytes(self) -> int:
        """The denoiser's size in bytes after the plan is applied."""
        predicted = self.predicted.bytes
        if predicted is None:
            raise PlanError("plan has no predictions.bytes; regenerate it with `mpsearch solve`")
        return predicted

    def format_counts(self) -> dict[str, int]:
        """How many layers the plan puts in each format."""
        counts: dict[str, int] = {}
        for fmt in self.layers.values():
            counts[fmt] = counts.get(fmt, 0) + 1
        return counts

    # ---- construction

    @classmethod
    def from_assignment(cls, info: ModelInfo, assignment: dict[str, str], *, budget: dict | None = None,
                        predictions: dict | None = None, provenance: dict | None = None,
                        overrides: list | None = None, weights: str | None = None,
                        calibration: dict | None = None) -> Plan:
        """A plan for ``info`` with every candidate layer named (unlisted layers stay ``fp``).

        ``weights`` is the digest of the weights the plan was made from; ``apply_plan`` checks it."""
        unknown = sorted(set(assignment) - set(info.names))
        if unknown:
            raise PlanError(f"assignment names layers the model does not have: {', '.join(unknown[:5])}")
        layers = {name: assignment.get(name, "fp") for name in info.names}
        for name, fmt in layers.items():
            why = info.layer(name).why_not(fmt)
            if why is not None:
                raise PlanError(f"layer {name!r} cannot take {fmt!r}: {why}")
        preds = {"bytes": info.bytes_for(layers), "fixed_bytes": info.fixed_bytes, "fp_bytes": info.fp_bytes}
        preds.update(predictions or {})
        prov = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **versions()}
        prov.update(provenance or {})
        used = {n: c for n, c in (calibration or {}).items() if split_candidate(layers.get(n, "fp"))[1] is not None}
        return cls(model_class=info.denoiser_class, fingerprint=info.fingerprint, layers=layers, budget=budget,
                   overrides=list(overrides or []), predictions=preds, provenance=prov, weights=weights,
                   calibration=used)

    @classmethod
    def uniform(cls, pipe_or_model: object, fmt: str) -> Plan:
        """Every eligible layer in ``fmt``, the others in fp: the baseline every result is compared with."""
        if fmt not in available_formats():
            raise PlanError(f"unknown format {fmt!r}; expected one of {', '.join(available_formats())}")
        info = pipe_or_model if isinstance(pipe_or_model, ModelInfo) else describe(pipe_or_model)
        weights = None if isinstance(pipe_or_model, ModelInfo) else weights_digest(pipe_or_model, info.names)
        assignment = {l.name: (fmt if fmt in l.eligible else "fp") for l in info.layers}
        return cls.from_assignment(info, assignment, provenance={"solver": f"uniform-{fmt}"}, weights=weights)

    # ---- checks against a model

    def check_model(self, info: ModelInfo) -> None:
        """Raise PlanError unless this plan was made for the model ``info`` describes."""
        if self.model_class != info.denoiser_class:
            raise PlanError(f"plan is for a {self.model_class}, the model is a {info.denoiser_class}; "
                            "use a plan made for this model")
        missing = [n for n in self.layers if n not in info._by_name()]
        if missing:
            raise PlanError(f"plan names {len(missing)} layer(s) the model does not have (e.g. {missing[0]!r}); "
                            "use a plan made for this model")
        if self.fingerprint != info.fingerprint:
            raise PlanError(f"plan fingerprint {self.fingerprint} does not match the model's {info.fingerprint}; "
                            "the plan was made for another model: solve again for this one")
        unlisted = [n for n in info.names if n not in self.layers]
        if unlisted:  # a plan names every candidate layer; a shorter one is truncated or hand-cut
            raise PlanError(f"plan does not list {len(unlisted)} of the model's {len(info.names)} layers (e.g. "
                            f"{unlisted[0]!r}), so the file is truncated or edited; {_REGEN} (list fp layers too)")
        for name, fmt in self.layers.items():
            layer = info.layer(name)
            why = layer.why_not(fmt)
            if why is not None:
                raise PlanError(f"plan puts layer {name!r} in {fmt!r}, which cannot take shape "
                                f"{layer.shape}: {why}; {_REGEN}")

    def check_weights(self, pipe_or_model: object, info: ModelInfo | None = None) -> None:
        """Raise PlanError if the model's weights are not those the plan was made from (when it records them)."""
        if self.weights is None:
            return
        names = (info or describe(pipe_or_model)).names
        try:
            same, now = same_weights(self.weights, pipe_or_model, names)
        except ModelError as e:  # a retired or unknown digest scheme
            raise PlanError(f"plan model.weights {self.weights!r}: {e}") from None
        if not same:
            raise PlanError(f"the model's weights ({now}) are not those the plan was made from ({self.weights}): "
                            "they changed since profiling (fine-tuned, re-trained or another checkpoint); profile "
                            "and solve again for these weights, or pass ignore_weights=True (CLI: "
                            "--ignore-weights) to apply it anyway")

    # ---- files

    def to_dict(self) -> dict:
        """The plan as the mapping its YAML file holds (see docs/design.md, The plan file)."""
        return {
            "schema_version": self.schema_version,
            "model": {"class": self.model_class, "fingerprint": self.fingerprint,
                      **({"weights": self.weights} if self.weights is not None else {})},
            "budget": self.budget,
            "layers": dict(self.layers),
            "overrides": list(self.overrides),
            "cache": self.cache,
            "predictions": dict(self.predictions),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: object, source: str = "plan") -> Plan:
        """The plan a plan file's mapping ``data`` describes; PlanError (naming ``source``) for unknown or missing
        keys, a different schema version or a malformed section."""
        if not isinstance(data, dict):
            raise PlanError(f"{source} must be a YAML mapping with keys {', '.join(_TOP_KEYS)}; got "
                            f"{type(data).__name__}; {_REGEN}")
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            raise PlanError(f"{source} has unknown key {unknown[0]!r}; allowed keys: {', '.join(_TOP_KEYS)}")
        for key in ("schema_version", "model", "layers"):
            if key not in data:
                raise PlanError(f"{source} lacks the required key {key!r}; regenerate it with `mpsearch solve`")
        if not _is_schema_version(data["schema_version"]):
            raise PlanError(f"{source} has schema_version {data['schema_version']!r}, this mpsearch reads "
                            f"{SCHEMA_VERSION} (an integer); regenerate the plan with `mpsearch solve`")
        model = data["model"]
        if (not isinstance(model, dict) or not set(_MODEL_KEYS) <= set(model)
                or not set(model) <= set(_MODEL_KEYS + _MODEL_OPTIONAL_KEYS)):
            raise PlanError(f"{source} 'model' must have exactly the keys class and fingerprint (and optionally "
                            f"weights); got {model!r}; {_REGEN}")
        for key in ("budget", "predictions", "provenance"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise PlanError(f"{source} {key!r} must be a mapping, got {type(data[key]).__name__}")
        return cls(model_class=model["class"], fingerprint=model["fingerprint"], layers=data["layers"],
                   budget=data.get("budget"), overrides=data.get("overrides") or [], cache=data.get("cache"),
                   predictions=data.get("predictions") or {}, provenance=data.get("provenance") or {},
                   schema_version=data["schema_version"], weights=model.get("weights"))

    def save(self, path: StrPath) -> Path:
        """Write the plan as YAML, atomically; a plan with calibrated variants also writes their calibration
        beside it (``<stem>.calibration.safetensors``, its name and digest in the YAML's ``calibration``)."""
        data = self.to_dict()
        used = {n: self.calibration[n] for n in self.calibrated_layers() if n in self.calibration}
        if not used:
            return atomic_write_text(path, dump_yaml(data))
        self.check_calibration()
        side = calibration_path(path)
        fresh = not side.exists()
        data["calibration"] = {"file": side.name, "digest": save_calibration(side, used)}
        try:
            return atomic_write_text(path, dump_yaml(data))
        except BaseException:  # the plan was not written: neither is its calibration file
            if fresh:
                side.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: StrPath) -> Plan:
        """Read a plan strictly (safe YAML; unknown keys, formats and versions are errors)."""
        data = load_yaml(path, what="plan", error=PlanError)
        try:
            plan = cls.from_dict(data, source=f"plan {path}")
        except PlanError as e:
            msg = str(e)
            raise PlanError(msg if str(path) in msg else f"plan {path}: {msg}") from None
        ref = data.get("calibration")
        if ref is not None:
            if not (isinstance(ref, dict) and set(ref) == {"file", "digest"} and isinstance(ref["file"], str)
                    and isinstance(ref["digest"], str) and ref["file"] == Path(ref["file"]).name):
                raise PlanError(f"plan {path} 'calibration' must be {{file: <name beside the plan>, digest: ...}}, "
                                f"got {ref!r}; {_REGEN}")
            try:
                plan.calibration = load_calibration(Path(path).with_name(ref["file"]), ref["digest"],
                                                    where=f"plan {path}")
            except PlanError as e:  # said when the plan is applied, after the checks against the model
                plan._calibration_error = str(e)
        return plan

