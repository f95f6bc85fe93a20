"""Which prompts a profile measures: the user's (a file, a list, a count of built-in ones) or, for a
text-to-image pipeline given neither prompts nor labels, a few of the built-in calibration set."""

from __future__ import annotations

from dataclasses import fields

from mpsearch.profiling.profiler import ProfileConfig, make_config
from mpsearch.prompts import DEFAULT_PROFILE_PROMPTS, choose_prompts
from mpsearch.runtime.generation import takes_prompts

_DEFAULT_LABELS = next(f.default for f in fields(ProfileConfig) if f.name == "labels")


def calibration_config(pipe, config: ProfileConfig | None, options: dict,
                       labels_given: bool | None = None) -> tuple[ProfileConfig, str | None]:
    """``config`` (None: the default) with ``options`` applied and its prompts chosen, and the line to say
    about them (None when this chose none).

    ``options["prompts"]`` may be a number of built-in calibration prompts, a prompts file or a list of prompts.
    Without prompts, a text-to-image ``pipe`` gets ``DEFAULT_PROFILE_PROMPTS`` of the built-in calibration set
    unless labels were given (``labels_given``; None: ``labels`` in ``options`` or labels other than the
    default in ``config``), which stay an error naming --prompts. Class-conditional pipelines keep their labels.
    """
    options = dict(options)
    spec = options.pop("prompts", None)
    if isinstance(spec, (list, tuple)) and not spec:  # no prompts: the labels, as ProfileConfig(prompts=()) means
        options["prompts"], spec = (), None
    chosen = choose_prompts(spec, "calibration") if spec is not None else None
    if chosen is None:
        if labels_given is None:
            labels_given = "labels" in options or (config is not None and config.labels != _DEFAULT_LABELS)
        has_prompts = bool(config is not None and config.prompts)
        if not has_prompts and not labels_given and takes_prompts(pipe):
            chosen = choose_prompts(None, "calibration", default=DEFAULT_PROFILE_PROMPTS)
    if chosen is not None:
        options.update(prompts=chosen.prompts, prompt_set=chosen.source if chosen.builtin else None)
    return make_config(config, options), None if chosen is None else chosen.line
