"""Which pipeline a command runs when ``--model`` is not given: the model its profile or plan was made for.

A profile and a plan record their denoiser's class and fingerprint (its candidate layers' names, kinds and
shapes), not where it was loaded from; an embedded model (``default``, ``default-unet``) is recognised by that
record, any other model must be named with ``--model``. An explicit ``--model`` that is another model than the
record is a one-line ModelError instead of a failure deep inside the command.
"""

from __future__ import annotations

from mpsearch.errors import ModelError
from mpsearch.models import describe
from mpsearch.apps import pipeline

__all__ = ["model_for", "pipeline_for"]

#: the embedded models a profile or plan is matched against, in order (``default`` is the DiT)
EMBEDDED_MODELS = ("default", "default-unet")


def _records(profile=None, plans=()) -> list[tuple[str, str, str]]:
    """(what, denoiser class, fingerprint) of the profile and each plan."""
    out = []
    if profile is not None:
        out.append((f"profile {profile.path}", profile.info.denoiser_class, profile.info.fingerprint))
    for name, plan in plans:
        out.append((f"plan {name}", plan.model_class, plan.fingerprint))
    return out


def _match(profile=None, plans=(), device=None):
    """(name, pipeline) of the embedded model the first record names, ("default", None) without records;
    ModelError when the record names no embedded model."""
    records = _records(profile, plans)
    if not records:
        return "default", None
    what, cls, fingerprint = records[0]
    for name in EMBEDDED_MODELS:
        pipe = pipeline.load_pipeline(name, device=device)
        info = describe(pipe)
        if (info.denoiser_class, info.fingerprint) == (cls, fingerprint):
            return name, pipe
    raise ModelError(f"{what} was made for a {cls} (fingerprint {fingerprint}) that is not an embedded model; pass "
                     f"that model's pipeline folder with --model")


def model_for(model, *, profile=None, plans=()) -> str:
    """The model to load: ``model`` when given, else the embedded model the profile (or the first plan,
    ``plans`` being ``(name, Plan)`` pairs) was made for, else ``"default"``. Raises ModelError when the record
    names no embedded model (pass ``--model``)."""
    return model if model is not None else _match(profile, plans)[0]


def pipeline_for(model, *, profile=None, plans=(), device=None):
    """The pipeline for a command: :func:`model_for`'s model, loaded; an explicit ``model`` whose denoiser is
    not the one the profile or a plan records is a ModelError naming both."""
    if model is None:
        name, pipe = _match(profile, plans, device)
        return pipe if pipe is not None else pipeline.load_pipeline(name, device=device)
    pipe = pipeline.load_pipeline(model, device=device)
    info = describe(pipe)
    for what, cls, fingerprint in _records(profile, plans):
        if (cls, fingerprint) != (info.denoiser_class, info.fingerprint):
            same = "another architecture of " if cls == info.denoiser_class else ""
            raise ModelError(f"--model {model} is {same}a {info.denoiser_class} (fingerprint {info.fingerprint}), "
                             f"but {what} was made for a {cls} (fingerprint {fingerprint}); drop --model to use "
                             f"the {what.split()[0]}'s model, or pass the model it was made for")
    return pipe
