"""The CPU kernels, a module per format where the code is one format's, and the pieces they share.

* :mod:`.int8`: INT8 W8A8 with the integer product on ``torch._int_mm`` (``MPSEARCH_KERNELS=int8=...``);
* :mod:`.decode`: the 4-bit formats (INT4, NVFP4) decoded into reused memory: their weight-only kernels and
  NVFP4 W4A4 emulated in float32, bit for bit the reference;
* :mod:`.nvfp4`: NVFP4 W4A4 on the bfloat16 GEMM, NVFP4 hardware's arithmetic (``nvfp4=...``), falling
  back to :mod:`.decode`'s;
* :mod:`.loops`: numba's one-pass loops that :mod:`.decode` and :mod:`.nvfp4` run where they can (``jit=...``);
* :mod:`.compiled`: the optional ``torch.compile`` kernels (``mpsearch.compiled_cpu_kernels()``);
* :mod:`.workspace`: the scratch memory the kernels reuse from call to call.

Importing this package registers the kernels (no device needed); :mod:`.compiled` registers its own only
when turned on.
"""

from __future__ import annotations

from mpsearch.runtime.kernels.cpu import int8  # noqa: F401  isort: skip
from mpsearch.runtime.kernels.cpu import decode  # noqa: F401  isort: skip
from mpsearch.runtime.kernels.cpu import nvfp4  # noqa: F401  isort: skip  (after decode: it wraps its kernels)
from mpsearch.runtime.kernels.cpu import loops  # noqa: F401  isort: skip  (imported by decode)
