"""Solvers by name: :func:`register_solver` (a class decorator), :func:`get_solver` and :func:`available_solvers`.

Each solver module registers its class on import (``mpsearch.allocation.solvers`` imports them all), under its ``name``
and ``aliases``; :func:`get_solver` builds an instance from a name and keyword options, naming the valid
names or options when one is wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from mpsearch.allocation.defaults import DEFAULT_SOLVER
from mpsearch.allocation.solvers.base import BaseSolver
from mpsearch.errors import UsageError

__all__ = ["DEFAULT_SOLVER", "available_solvers", "get_solver", "register_solver"]

_REGISTRY: dict[str, type[BaseSolver]] = {}
_ALIASES: dict[str, str] = {}
_S = TypeVar("_S", bound=type[BaseSolver])


def register_solver(cls: _S) -> _S:
    """Class decorator: make ``cls`` available to :func:`get_solver` under ``cls.name`` and ``cls.aliases``."""
    if not (isinstance(cls, type) and issubclass(cls, BaseSolver)):
        raise UsageError(f"register_solver expects a BaseSolver subclass, got {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise UsageError(f"{cls.__name__}.name must be a non-empty string to register it, got {cls.name!r}")
    for key in (cls.name, *cls.aliases):
        holder = _REGISTRY.get(_ALIASES.get(key, key))
        same = holder is not None and (holder.__module__, holder.__qualname__) == (cls.__module__, cls.__qualname__)
        if holder is not None and not same:
            raise UsageError(f"solver name {key!r} is taken by {holder.__name__}; choose another for {cls.__name__}")
    _REGISTRY[cls.name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def available_solvers() -> tuple[str, ...]:
    """The registered solver names, sorted (aliases not included)."""
    return tuple(sorted(_REGISTRY))


def get_solver(name: str | BaseSolver, **options: object) -> BaseSolver:
    """A new solver instance by name or alias, e.g. ``get_solver("cbc", time_limit=60)``; a solver instance
    (``CbcSolver(time_limit=5)``) is returned as it is, so every ``solver=`` takes either."""
    if isinstance(name, BaseSolver):
        if options:
            raise UsageError(f"options {', '.join(sorted(options))} go to the solver's constructor; {name!r} is "
                             "already built: pass them there, or pass the solver's name")
        return name
    if not isinstance(name, str):
        raise UsageError(f"a solver name must be a string, got {name!r}; valid names: {', '.join(available_solvers())}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    cls: Callable[..., BaseSolver] | None = _REGISTRY.get(key)
    if cls is None:
        aliases = ", ".join(f"{a} = {t}" for a, t in sorted(_ALIASES.items()))
        raise UsageError(
            f"unknown solver {name!r}; valid names: {', '.join(available_solvers())}"
            + (f" (aliases: {aliases})" if aliases else "")
            + f"; the exact ILP solvers are {DEFAULT_SOLVER} (CBC, the default) and highs (HiGHS)"
        )
    params = inspect.signature(cls).parameters
    accepted = [p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UsageError(
            f"solver {key!r} does not take option(s) {', '.join(map(repr, unknown))}; it takes: "
            + (", ".join(accepted) if accepted else "no options")
        )
    return cls(**options)
