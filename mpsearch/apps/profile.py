"""The stages composed for users: ``mpsearch.profile`` runs the local tier (:mod:`mpsearch.profiling`) and, when
asked, the end-to-end tier, whose shortlist is chosen by solving (:mod:`mpsearch.allocation.decoupled`).

It sits above both stages because it needs both; each stage on its own imports only what lies below it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mpsearch.allocation.decoupled import run_end_to_end
from mpsearch.errors import ProfileError, UsageError
from mpsearch.profiling.auto import MAX_TIME, choose_profile, profile_auto, resume_choice, would_probe
from mpsearch.profiling.calibrate import choose_variants
from mpsearch.profiling.distributed import detect_launch, distributed_session, pipeline_device, profile_sharded
from mpsearch.profiling.profiler import ProfileConfig, default_profile_path, make_config, model_name, profile_local
from mpsearch.profiling.prompting import calibration_config
from mpsearch.profiling.store import Profile, stored_config

__all__ = ["profile", "ProfileConfig", "default_profile_path"]


def profile(pipe, config: ProfileConfig | None = None, *, out=None, shard: tuple[int, int] = (0, 1),
            progress: bool = True, end_to_end: bool | None = None, shortlist: int = 8, windows: int = 4,
            content_scorer=None, features=None, distributed: bool | None = None, mode: str | None = None,
            max_time: float = MAX_TIME, max_memory=None, say=None, variants=None, **options) -> Profile:
    """Profile ``pipe``'s denoiser (local tier) into the SQLite file ``out`` and return the loaded Profile.

    ``options`` override fields of the default ProfileConfig (labels, seeds, steps, guidance_scale, formats).
    ``prompts`` (text-to-image pipelines) may be a number of built-in calibration prompts, a prompts file or a
    list of prompts; left out, a text-to-image pipeline is profiled on ``mpsearch.prompts.DEFAULT_PROFILE_PROMPTS``
    prompts of the built-in calibration set (:mod:`mpsearch.profiling.prompting`), said on stderr with ``progress``.
    Running again with the same file and configuration resumes: finished units are skipped.
    ``shard=(i, n)`` measures only the units u with u % n == i.

    Under ``torchrun`` or ``accelerate launch`` (``distributed=None`` detects it from the environment; ``False``
    profiles in this process alone), every rank must call this: rank r measures shard (r, n) into
    ``<out>.shard<r>-of-<n>``, rank 0 merges them into ``out`` (:mod:`mpsearch.profiling.distributed`), and every
    rank returns the merged Profile; ``shard`` must then be left alone. Progress is shown by rank 0 only.

    ``end_to_end`` (on by default when ``content_scorer`` or ``features`` is given) then runs the cheap
    end-to-end tier (``mpsearch.allocation.decoupled.run_end_to_end``: ``shortlist`` layers, ``windows`` step
    windows) into the same file; its summary (cost_ratio, spearman) is ``profile.end_to_end``. Under a
    distributed launch, rank 0 runs it on the merged profile while the other ranks wait.
    ``content_scorer(images, conditions) -> (N,)`` and ``features(images) -> (N, D)`` replace the default
    digit classifier's condition score and feature space (e.g. a local CLIP or Inception model).

    ``mode`` (default ``config.mode``, else ``"auto"``): ``"auto"`` chooses the sampling and replay settings the
    caller left unset so the whole command stays within ``max_time`` generations and the ``max_memory`` cap
    (bytes, ``"20GB"`` or ``"1.5x"`` a generation's peak; :mod:`mpsearch.profiling.auto`: small models stay
    exact, without a probe; a large model's probe is the profile's own first unit,
    :func:`mpsearch.profiling.auto.profile_auto`), records the choice in the profile, and says it in one line
    (``say``, default: stderr when ``progress``; said after the probe, before the rest of the work; a small
    model's exact profile is chosen silently); a file made by the auto mode resumes with its own choice.
    ``"exact"`` profiles with the settings as given (every element, every step, unless set).

    ``variants`` (``"none"``, ``"default"``, ``"all"`` or variant names): the calibrated quantizer variants measured
    besides each format's round-to-nearest (``nvfp4:clip``, ``int8:smooth``, ``int4:gptq``;
    :mod:`mpsearch.profiling.calibrate`). Left unset: ``"default"`` (``gptq`` and ``smooth-gptq``) where the
    model is profiled exactly, none for a large model in the automatic mode (said in a line). Formats that
    already name variants are kept.
    """
    launch = detect_launch() if distributed is not False else None
    config, said = calibration_config(pipe, config, options)
    options = {}
    if said and progress and (launch is None or launch.rank == 0):
        print(said, file=sys.stderr)
    if distributed and launch is None:
        raise UsageError("distributed=True, but this process is not part of a distributed launch (WORLD_SIZE > 1); "
                         "start it with torchrun or accelerate launch, or leave distributed unset")
    e2e = bool(end_to_end or (end_to_end is None and (content_scorer is not None or features is not None)))

    def tier2(loaded, show):
        return run_end_to_end(pipe, loaded, shortlist_n=shortlist, windows=windows, content_scorer=content_scorer,
                              features=features, progress=show)

    config = make_config(config, options)
    mode = mode or config.mode or "auto"
    if mode not in ("auto", "exact"):
        raise UsageError(f"mode must be 'auto' or 'exact', got {mode!r}; leave it unset for the automatic choice")
    out = Path(out) if out is not None else default_profile_path(model_name(pipe))
    if say is None:
        say = _stderr if progress and (launch is None or launch.rank == 0) else (lambda line: None)
    config, note = choose_variants(config, variants, large=mode == "auto" and would_probe(pipe))
    if note:  # said with the automatic mode's one line
        said_by, pending = say, [note]

        def say(text: str) -> None:
            said_by(f"{text}; {pending.pop()}" if pending else text)

    def auto(probe_here=False):
        """(config, line, forecast) of the auto mode's choice; with ``probe_here``, a large model's choice is
        left to :func:`profile_auto` (config None), which probes the profile's own first unit."""
        if not would_probe(pipe):  # a small model: the config as given (exact unless set), silently
            return config, None, None
        try:
            stored = stored_config(out) if out.is_file() else None
        except ProfileError:
            stored = None  # not a profile file: the writer says so
        resumed = resume_choice(config, stored)
        if resumed is not None:
            return resumed, f"profile: auto -> resuming the choice recorded in {out}: {resumed.reason}", None
        if tuple(shard) != (0, 1) and would_probe(pipe):
            raise UsageError(f"shard {shard[0]}/{shard[1]}: the automatic mode chooses the settings in each process "
                             "from its own probe, so separate shards could differ and not merge; pass the settings "
                             "with --exact (mode='exact'), e.g. --exact --sample 64 --replay-steps 1 --replay-batch 1 "
                             "--replay-rows 1, or run under torchrun, where rank 0 chooses for every rank")
        if probe_here:
            return None, None, None
        choice = choose_profile(pipe, config, max_time=max_time, max_memory=max_memory)
        return choice.config, choice.line, choice.forecast

    if launch is None:
        chosen, forecast = config, None
        if mode == "auto":
            chosen, line, forecast = auto(probe_here=True)
            if line:
                say(line)
        if chosen is None:  # a large model: its probe is the profile's first unit, the line said in between
            loaded = profile_auto(pipe, config, out=out, progress=progress, max_time=max_time,
                                  max_memory=max_memory, say=say)
        else:
            loaded = profile_local(pipe, chosen, out=out, shard=shard, progress=progress, forecast=forecast)
        if e2e:
            loaded.end_to_end = tier2(loaded, progress)
        return loaded
    if tuple(shard) != (0, 1):
        raise UsageError(f"shard {shard[0]}/{shard[1]} given under a distributed launch (rank {launch.rank} of "
                         f"{launch.world_size}), which already splits the work: each rank takes its shard from "
                         "torch.distributed; leave out --shard (shard=)")
    with distributed_session(pipeline_device(pipe), launch=launch) as session:
        if mode == "auto":  # rank 0 chooses, every rank profiles with its choice
            config, line, _ = session.on_main(auto, what="waiting for rank 0 to choose the profile's settings")
            if line:
                say(line)
        loaded = profile_sharded(pipe, config, out, session, progress=progress)
        if e2e:
            loaded.end_to_end = session.on_main(lambda: tier2(loaded, progress),
                                                what="waiting for rank 0 to run the end-to-end tier")
    return loaded


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
