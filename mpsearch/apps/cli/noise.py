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
"""

from __future__ import annotations

import logging

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
