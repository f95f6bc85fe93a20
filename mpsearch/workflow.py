"""The stages composed for users: ``mpsearch.profile`` runs the local tier (:mod:`mpsearch.profiling`) and, when
asked, the end-to-end tier, whose shortlist is chosen by solving (:mod:`mpsearch.allocation.endtoend`).

It sits above both stages because it needs both; each stage on its own imports only what lies below it.
"""

from __future__ import annotations

from mpsearch.allocation.endtoend import run_end_to_end
from mpsearch.profiling.profiler import ProfileConfig, default_profile_path, profile_local
from mpsearch.profiling.store import Profile

__all__ = ["profile", "ProfileConfig", "default_profile_path"]


def profile(pipe, config: ProfileConfig | None = None, *, out=None, shard: tuple[int, int] = (0, 1),
            progress: bool = True, end_to_end: bool | None = None, shortlist: int = 8, windows: int = 4,
            content_scorer=None, features=None, **options) -> Profile:
    """Profile ``pipe``'s denoiser (local tier) into the SQLite file ``out`` and return the loaded Profile.

    ``options`` override fields of the default ProfileConfig (labels, seeds, steps, guidance_scale, formats).
    Running again with the same file and configuration resumes: finished units are skipped.
    ``shard=(i, n)`` measures only the units u with u % n == i.

    ``end_to_end`` (on by default when ``content_scorer`` or ``features`` is given) then runs the cheap
    end-to-end tier (``mpsearch.allocation.endtoend.run_end_to_end``: ``shortlist`` layers, ``windows`` step
    windows) into the same file; its summary (cost_ratio, spearman) is ``profile.end_to_end``.
    ``content_scorer(images, conditions) -> (N,)`` and ``features(images) -> (N, D)`` replace the default
    digit classifier's condition score and feature space (e.g. a local CLIP or Inception model).
    """
    loaded = profile_local(pipe, config, out=out, shard=shard, progress=progress, **options)
    if end_to_end or (end_to_end is None and (content_scorer is not None or features is not None)):
        loaded.end_to_end = run_end_to_end(pipe, loaded, shortlist_n=shortlist, windows=windows,
                                           content_scorer=content_scorer, features=features, progress=progress)
    return loaded
