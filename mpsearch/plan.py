"""The runtime plan: per-layer formats, per-step activation overrides, cache schedule, budget, predictions.

A plan is a strict, versioned YAML file. Loading refuses unknown keys, unknown formats and a wrong
``schema_version``; applying refuses layers the model does not have and a fingerprint mismatch.
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass, field
from pathlib import Path

from mpsearch.errors import PlanError
from mpsearch.formats import available_formats
from mpsearch.io import atomic_write_text, dump_yaml, load_yaml
from mpsearch.models import ModelInfo, describe, same_weights, weights_digest
from mpsearch.cache_section import validate_cache_section
from mpsearch.version import __version__

SCHEMA_VERSION = 1
_TOP_KEYS = ("schema_version", "model", "budget", "layers", "overrides", "cache", "predictions", "provenance")
_MODEL_KEYS = ("class", "fingerprint")
_MODEL_OPTIONAL_KEYS = ("weights",)  # added within schema 1: plans without it still load
_REGEN = "fix the file or regenerate it with `mpsearch solve`"
_OVERRIDE_KEYS = ("steps", "activations")


def versions() -> dict:
    """Versions of mpsearch and of the libraries that decide its numbers."""
    import diffusers
    import torch


    return {"mpsearch": str(__version__), "torch": str(torch.__version__), "diffusers": str(diffusers.__version__),
            "python": platform.python_version()}


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

    def __post_init__(self):
        if self.schema_version != SCHEMA_VERSION:
            raise PlanError(f"plan schema_version is {self.schema_version!r}, this mpsearch reads {SCHEMA_VERSION}; "
                            "regenerate the plan with `mpsearch solve`")
        if not isinstance(self.layers, dict) or not self.layers:
            raise PlanError(f"plan 'layers' must be a non-empty mapping of module name to format; {_REGEN}")
        known = set(available_formats())
        for name, fmt in self.layers.items():
            if not isinstance(name, str) or not isinstance(fmt, str):
                raise PlanError(f"plan layer entry {name!r}: {fmt!r} must map a module name to a format name; "
                                f"{_REGEN}")
            if fmt not in known:
                raise PlanError(f"plan layer {name!r} has unknown format {fmt!r}; expected one of {', '.join(sorted(known))}")
        if not isinstance(self.overrides, list):
            raise PlanError("plan 'overrides' must be a list of {steps: [start, stop], activations: {layer: fp|quant}}")
        for i, ov in enumerate(self.overrides):
            _check_override(i, ov, self.layers)
        if self.cache is not None:

            validate_cache_section(self.cache)  # schema: mpsearch/cache_section.py
        if "bytes" in self.predictions and not isinstance(self.predictions["bytes"], int):
            raise PlanError(f"plan predictions.bytes must be an integer, got {self.predictions['bytes']!r}; {_REGEN}")
        if self.weights is not None and not isinstance(self.weights, str):
            raise PlanError(f"plan model.weights must be a digest string, got {self.weights!r}; {_REGEN}")

    # ---- what a plan says

    @property
    def predicted_bytes(self) -> int:
        """The denoiser's size in bytes after the plan is applied."""
        if "bytes" not in self.predictions:
            raise PlanError("plan has no predictions.bytes; regenerate it with `mpsearch solve`")
        return int(self.predictions["bytes"])

    def format_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fmt in self.layers.values():
            counts[fmt] = counts.get(fmt, 0) + 1
        return counts

    # ---- construction

    @classmethod
    def from_assignment(cls, info: ModelInfo, assignment: dict[str, str], *, budget: dict | None = None,
                        predictions: dict | None = None, provenance: dict | None = None,
                        overrides: list | None = None, weights: str | None = None) -> "Plan":
        """A plan for ``info`` with every candidate layer named (unlisted layers stay ``fp``).

        ``weights`` is the digest of the weights the plan was made from; ``apply_plan`` checks it."""
        unknown = sorted(set(assignment) - set(info.names))
        if unknown:
            raise PlanError(f"assignment names layers the model does not have: {', '.join(unknown[:5])}")
        layers = {name: assignment.get(name, "fp") for name in info.names}
        for name, fmt in layers.items():
            if fmt not in info.layer(name).eligible:
                raise PlanError(f"layer {name!r} cannot take {fmt!r}: {info.layer(name).ineligible.get(fmt, 'not eligible')}")
        preds = {"bytes": info.bytes_for(layers), "fixed_bytes": info.fixed_bytes, "fp_bytes": info.fp_bytes}
        preds.update(predictions or {})
        prov = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **versions()}
        prov.update(provenance or {})
        return cls(model_class=info.denoiser_class, fingerprint=info.fingerprint, layers=layers, budget=budget,
                   overrides=list(overrides or []), predictions=preds, provenance=prov, weights=weights)

    @classmethod
    def uniform(cls, pipe_or_model, fmt: str) -> "Plan":
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
            if fmt not in layer.eligible:
                raise PlanError(f"plan puts layer {name!r} in {fmt!r}, which cannot take shape "
                                f"{layer.shape}: {layer.ineligible.get(fmt, 'not eligible')}; {_REGEN}")

    def check_weights(self, pipe_or_model, info: ModelInfo | None = None) -> None:
        """Raise PlanError if the model's weights are not those the plan was made from (when it records them)."""
        if self.weights is None:
            return
        names = (info or describe(pipe_or_model)).names
        same, now = same_weights(self.weights, pipe_or_model, names)
        if not same:
            raise PlanError(f"the model's weights ({now}) are not those the plan was made from ({self.weights}): "
                            "they changed since profiling (fine-tuned, re-trained or another checkpoint); profile "
                            "and solve again for these weights, or pass ignore_weights=True (CLI: "
                            "--ignore-weights) to apply it anyway")

    # ---- files

    def to_dict(self) -> dict:
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
    def from_dict(cls, data, source: str = "plan") -> "Plan":
        if not isinstance(data, dict):
            raise PlanError(f"{source} must be a YAML mapping with keys {', '.join(_TOP_KEYS)}; got "
                            f"{type(data).__name__}; {_REGEN}")
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            raise PlanError(f"{source} has unknown key {unknown[0]!r}; allowed keys: {', '.join(_TOP_KEYS)}")
        for key in ("schema_version", "model", "layers"):
            if key not in data:
                raise PlanError(f"{source} lacks the required key {key!r}; regenerate it with `mpsearch solve`")
        if data["schema_version"] != SCHEMA_VERSION:
            raise PlanError(f"{source} has schema_version {data['schema_version']!r}, this mpsearch reads "
                            f"{SCHEMA_VERSION}; regenerate the plan with `mpsearch solve`")
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

    def save(self, path) -> Path:
        """Write the plan as YAML, atomically."""
        return atomic_write_text(path, dump_yaml(self.to_dict()))

    @classmethod
    def load(cls, path) -> "Plan":
        """Read a plan strictly (safe YAML; unknown keys, formats and versions are errors)."""
        data = load_yaml(path, what="plan", error=PlanError)
        try:
            return cls.from_dict(data, source=f"plan {path}")
        except PlanError as e:
            msg = str(e)
            raise PlanError(msg if str(path) in msg else f"plan {path}: {msg}") from None


def _check_override(i: int, ov, layers: dict) -> None:
    where = f"plan overrides[{i}]"
    if not isinstance(ov, dict) or set(ov) != set(_OVERRIDE_KEYS):
        raise PlanError(f"{where} must have exactly the keys steps and activations; got {ov!r}; {_REGEN}")
    steps = ov["steps"]
    if (not isinstance(steps, list) or len(steps) != 2 or not all(isinstance(s, int) for s in steps)
            or not 0 <= steps[0] < steps[1]):
        raise PlanError(f"{where}.steps must be [start, stop) step indices with 0 <= start < stop; got {steps!r}; "
                        f"{_REGEN}")
    acts = ov["activations"]
    if not isinstance(acts, dict):
        raise PlanError(f"{where}.activations must map layer names to fp or quant; got {acts!r}; {_REGEN}")
    for name, mode in acts.items():
        if name not in layers:
            raise PlanError(f"{where} names layer {name!r}, which the plan does not list; {_REGEN}")
        if mode not in ("fp", "quant"):
            raise PlanError(f"{where} sets layer {name!r} activations to {mode!r}; expected fp or quant")
