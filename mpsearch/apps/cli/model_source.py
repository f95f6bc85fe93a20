"""Which pipeline a command runs when ``--model`` is not given: the model its profile or plan was made for.

A profile and a plan record their denoiser's class and fingerprint (its candidate layers' names, kinds and
shapes) and, when made by this mpsearch, where the model was loaded from (``Profile.model_source``, a plan's
``provenance["model_source"]``: an embedded name or a folder's absolute path). Without ``--model`` that source
is loaded if it still loads and holds the recorded model; else an embedded model (``default``,
``default-unet``) that matches the record; else a one-line ModelError naming the recorded source and saying to
pass ``--model``. An explicit ``--model`` that is another model than the record is a one-line ModelError instead
of a failure deep inside the command.
"""

from __future__ import annotations

from pathlib import Path

from mpsearch.apps import pipeline
from mpsearch.errors import ModelError
from mpsearch.models import describe

__all__ = ["model_for", "pipeline_for"]

#: the embedded models a profile or plan is matched against, in order (``default`` is the DiT)
EMBEDDED_MODELS = ("default", "default-unet")


def _records(profile=None, plans=()) -> list[tuple[str, str, str, str | None]]:
    """(what, denoiser class, fingerprint, recorded model source or None) of the profile and each plan."""
    out = []
    if profile is not None:
        out.append((f"profile {profile.path}", profile.info.denoiser_class, profile.info.fingerprint,
                    getattr(profile, "model_source", None)))
    for name, plan in plans:
        source = (plan.provenance or {}).get("model_source")
        out.append((f"plan {name}", plan.model_class, plan.fingerprint, source if isinstance(source, str) else None))
    return out


def _load_recorded(source: str, cls: str, fingerprint: str, device) -> tuple[object | None, str]:
    """(pipeline, "") when the recorded ``source`` still loads and holds the recorded model, else (None, why not)."""
    try:
        pipe = pipeline.load_pipeline(source, device=device)
        info = describe(pipe)
    except ModelError:
        gone = source not in pipeline.EMBEDDED and not Path(source).is_dir()
        return None, "is no longer there (moved or deleted)" if gone else "no longer loads"
    if (info.denoiser_class, info.fingerprint) == (cls, fingerprint):
        return pipe, ""
    return None, f"now holds another model (a {info.denoiser_class}, fingerprint {info.fingerprint})"


def _match(profile=None, plans=(), device=None):
    """(name or source, pipeline) of the model the first record names: its recorded source, else a matching
    embedded model; ("default", None) without records; ModelError when neither is found."""
    records = _records(profile, plans)
    if not records:
        return "default", None
    what, cls, fingerprint, source = records[0]
    why = ""
    if source is not None:
        pipe, why = _load_recorded(source, cls, fingerprint, device)
        if pipe is not None:
            return source, pipe
    for name in EMBEDDED_MODELS:
        if name == source:
            continue  # just tried
        pipe = pipeline.load_pipeline(name, device=device)
        info = describe(pipe)
        if (info.denoiser_class, info.fingerprint) == (cls, fingerprint):
            return name, pipe
    if source is not None:
        raise ModelError(f"{what} was made for a {cls} (fingerprint {fingerprint}) loaded from {source}, which "
                         f"{why}; pass that model's pipeline folder with --model")
    raise ModelError(f"{what} was made for a {cls} (fingerprint {fingerprint}) that is not an embedded model; pass "
                     f"that model's pipeline folder with --model")


def model_for(model, *, profile=None, plans=()) -> str:
    """The model to load: ``model`` when given, else the model the profile (or the first plan, ``plans`` being
    ``(name, Plan)`` pairs) was made for (its recorded source, else the matching embedded model), else
    ``"default"``. Raises ModelError when neither is found (pass ``--model``)."""
    return model if model is not None else _match(profile, plans)[0]


def pipeline_for(model, *, profile=None, plans=(), device=None):
    """The pipeline for a command: :func:`model_for`'s model, loaded; an explicit ``model`` whose denoiser is
    not the one the profile or a plan records is a ModelError naming both."""
    if model is None:
        name, pipe = _match(profile, plans, device)
        return pipe if pipe is not None else pipeline.load_pipeline(name, device=device)
    pipe = pipeline.load_pipeline(model, device=device)
    info = describe(pipe)
    for what, cls, fingerprint, _ in _records(profile, plans):
        if (cls, fingerprint) != (info.denoiser_class, info.fingerprint):
            same = "another architecture of " if cls == info.denoiser_class else ""
            raise ModelError(f"--model {model} is {same}a {info.denoiser_class} (fingerprint {info.fingerprint}), "
                             f"but {what} was made for a {cls} (fingerprint {fingerprint}); drop --model to use "
                             f"the {what.split()[0]}'s model, or pass the model it was made for")
    return pipe
