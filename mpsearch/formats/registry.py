"""The format registry: ``register_format`` fills it, ``get_format`` reads it.

Names are exact (plans store them verbatim): ``fp``, ``int8``, ``nvfp4``, ``int4`` (group 128) and the
int4 variants ``int4-g64`` and ``int4-g32``.
"""

from __future__ import annotations

from typing import TypeVar

from mpsearch.errors import FormatError
from mpsearch.formats.base import Format

_REGISTRY: dict[str, Format] = {}
_F = TypeVar("_F", bound=type[Format])


def register_format(cls: _F) -> _F:
    """Class decorator: instantiate ``cls()`` and register the instance under its ``name``.

    Re-registering a class of the same qualified name (a module reload) replaces the old instance;
    a different class claiming a taken name is a programming error.
    """
    inst = cls()
    name = getattr(inst, "name", "")
    if not name:
        raise FormatError(f"format class {cls.__qualname__} has no name; set the class attribute 'name'")
    old = _REGISTRY.get(name)
    if old is not None and type(old).__qualname__ != cls.__qualname__:
        raise FormatError(
            f"format name {name!r} is already taken by {type(old).__qualname__}; pick another name for "
            f"{cls.__qualname__}"
        )
    _REGISTRY[name] = inst
    return cls


def register_instance(fmt: Format) -> Format:
    """Register an already built format (a calibrated variant, :mod:`mpsearch.formats.variant`) under its name."""
    old = _REGISTRY.get(fmt.name)
    if old is not None and type(old) is not type(fmt):
        raise FormatError(f"format name {fmt.name!r} is already taken by {type(old).__qualname__}")
    _REGISTRY[fmt.name] = fmt
    return fmt


def available_formats(variants: bool = False, calibrated: bool = False) -> list[str]:
    """The registered format names in preference order (fp, int8, nvfp4, int4).

    With ``variants=True`` the int4 group variants (``int4-g64``, ``int4-g32``) follow; with
    ``calibrated=True`` the calibrated quantizer variants (``int8:clip``, ``nvfp4:smooth``, ...) follow.
    """
    primary = [n for n, f in _REGISTRY.items()
               if not getattr(f, "variant", False) and not getattr(f, "calibrated", False)]
    order = {n: i for i, n in enumerate(("fp", "int8", "nvfp4", "int4"))}
    primary.sort(key=lambda n: order.get(n, len(order)))
    if variants:
        primary += [n for n, f in _REGISTRY.items() if getattr(f, "variant", False)]
    if calibrated:
        primary += [n for n, f in _REGISTRY.items() if getattr(f, "calibrated", False)]
    return primary


def get_format(name: str | Format, group: int | None = None) -> Format:
    """The registered instance for ``name``; ``get_format("int4", group=64)`` is ``get_format("int4-g64")``.

    A ``Format`` instance passes through unchanged. Unknown names raise FormatError listing valid ones.
    """
    if isinstance(name, Format):
        fmt = name
    else:
        found = _REGISTRY.get(name) if isinstance(name, str) else None
        if found is None:
            raise FormatError(
                f"unknown format {name!r}; expected one of {', '.join(available_formats(variants=True))}"
            )
        fmt = found
    if group is None:
        return fmt
    fmt_group = getattr(fmt, "group", None)
    if fmt_group is None:
        raise FormatError(f"format {fmt.name!r} has no group size; pass group only with int4")
    if int(group) == fmt_group:
        return fmt
    # group variants are the registered formats of fmt's family; a format without a family has only its own group
    family = getattr(fmt, "family", None)
    siblings = [f for f in _REGISTRY.values() if family is not None and getattr(f, "family", None) == family]
    for other in siblings:
        if getattr(other, "group", None) == int(group):
            return other
    allowed = sorted({g for f in siblings if (g := getattr(f, "group", None)) is not None} | {fmt_group})
    raise FormatError(
        f"format {fmt.name!r} does not offer group size {group}; expected one of {', '.join(map(str, allowed))}"
    )
