"""Whether a profile holds every unit of work its configuration asks for (a shard holds only some).

A unit is one seed's batch: unit ``u`` measures ``config["seeds"][u]``, and ``mpsearch profile --shard i/n``
measures the units with ``u % n == i``. Solving from a shard decides on part of the measurements, so the
solvers refuse one unless asked (``allow_partial``).
"""

from __future__ import annotations

from mpsearch.errors import ProfileError

__all__ = ["check_complete", "missing_units"]


def missing_units(profile) -> tuple[int, ...]:
    """The units (indices into the profile's ``config["seeds"]``) that ``profile`` does not hold yet."""
    expected = range(len(profile.config.get("seeds") or ()))
    done = set(profile.units)
    return tuple(u for u in expected if u not in done)


def check_complete(profile, *, allow_partial: bool = False) -> None:
    """Raise ProfileError naming the missing units (and their seeds) when ``profile`` lacks some, unless
    ``allow_partial``."""
    missing = missing_units(profile)
    if not missing or allow_partial:
        return
    seeds = profile.config.get("seeds") or ()
    total = len(seeds)
    shown = ", ".join(f"{u} (seed {seeds[u]})" for u in missing[:8]) + (", ..." if len(missing) > 8 else "")
    raise ProfileError(
        f"profile {profile.path} holds {total - len(missing)} of its {total} units (missing unit(s) {shown}): it "
        f"is a shard of a `mpsearch profile --shard i/n` run; profile the other shards and `mpsearch profile merge` "
        f"them, or pass --allow-partial (allow_partial=True) to solve from this part")
