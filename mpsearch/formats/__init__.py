"""Number formats: the only place in mpsearch that knows bits.

``get_format(name)`` returns the registered instance; ``available_formats()`` lists the names in preference
order (fp, int8, nvfp4, int4); ``available_formats(calibrated=True)`` adds the calibrated quantizer variants
(``nvfp4:clip``, ..., :mod:`mpsearch.formats.variant`). See ``base.Format`` for the contract every format follows.
"""

from mpsearch.formats.base import Format, Packed, check_finite, matrix_shape
from mpsearch.formats.registry import available_formats, get_format, register_format

# Importing the modules registers the formats (order = registration order).
from mpsearch.formats import fp, int8, nvfp4, int4  # noqa: E402,F401  isort: skip
from mpsearch.formats.variant import register_variants  # noqa: E402  isort: skip

register_variants()

__all__ = [
    "Format",
    "Packed",
    "matrix_shape",
    "check_finite",
    "register_format",
    "get_format",
    "available_formats",
]
