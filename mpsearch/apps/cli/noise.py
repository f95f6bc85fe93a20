"""Other libraries' import-time messages that say nothing to an `mpsearch` user, dropped at their source.

Importing diffusers (which imports torchao) logs, on a healthy install:

* torchao (logger ``torchao``, ``torchao/__init__.py``): "Failed to load .../_C_*.so" for each optional C++
  kernel library built for another Python or GPU, or "Skipping import of cpp extensions ..." when torchao's
  build does not match torch. mpsearch runs its own kernels; ``mpsearch.to_torchao`` users on a GPU see
  torchao's own error when they need one of those kernels.
* torch (logger ``torch.utils._pytree``): "<enum ...> is an Enum subclass ... register_constant() ...
  deprecated", torchao registering its enums the old way.
* diffusers (logger ``diffusers.quantizers.torchao.torchao_quantizer``): "Unable to import `torchao` Tensor
  objects", diffusers looking for torchao classes that moved; it matters only for checkpoints serialized by
  torchao, which mpsearch neither writes nor reads.

Each is dropped by a filter on the logger that emits it, matched by its message: every other message of those
loggers, mpsearch's own errors and progress bars still reach stderr. ``--debug`` leaves them all on.

:func:`quiet_libraries` turns diffusers' and transformers' own progress bars and warnings off while a command runs,
each as soon as it is imported: a command that loads no pipeline (``solve`` on a profile) imports neither.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

#: logger name -> fragments of the messages dropped from it
NOISE: dict[str, tuple[str, ...]] = {
    "torchao": ("Failed to load ", "Skipping import of cpp extensions"),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
}


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(f in text for f in self.fragments)


def silence_library_noise() -> None:
    """Install the filters of :data:`NOISE` (once; before torch, torchao or diffusers is imported)."""
    for name, fragments in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))


#: the packages whose logging module (``<package>.logging``, the same API in both) :func:`quiet_libraries` quiets
QUIETED = ("diffusers.utils", "transformers.utils")


class _RunAfter(importlib.abc.Loader):
    """A module's own loader, then ``then(module)``; the module keeps its own loader once executed."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[ModuleType], None]):
        self.loader, self.then = loader, then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.then(module)


class _OnImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` once each of ``names`` has been imported (found by the finders after this one)."""

    def __init__(self, names: tuple[str, ...], then: Callable[[ModuleType], None]):
        self.names, self.then = names, then

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RunAfter(spec.loader, self.then)
                return spec
        return None


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers' own progress bars and warnings ("Loading pipeline components...") would break the one-line
    error and clutter --json runs (and transformers prints "Loading weights" bars for a text pipeline's
    encoders); mpsearch reports its own progress. Each library of :data:`QUIETED` is quieted now if imported,
    else right after the block imports it (importing diffusers takes seconds: a block that needs no pipeline
    imports none); restored afterwards."""
    saved = []

    def quiet(package: ModuleType) -> None:
        lg = sys.modules.get(f"{package.__name__}.logging")
        if lg is None:
            return
        saved.append((lg, lg.is_progress_bar_enabled(), lg.get_verbosity()))
        lg.disable_progress_bar()
        lg.set_verbosity_error()

    for name in QUIETED:
        if name in sys.modules:
            quiet(sys.modules[name])
    hook = _OnImport(tuple(n for n in QUIETED if n not in sys.modules), quiet)
    sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(hook)
        for lg, bars, level in reversed(saved):
            lg.set_verbosity(level)
            if bars:
                lg.enable_progress_bar()
