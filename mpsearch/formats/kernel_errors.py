"""Which exceptions of a torch op mean "no kernel for this shape, dtype or device here" (so that the reference
arithmetic may run instead), and which mean the device ran out of memory (never a reason to fall back).

A fallback catches ``RuntimeError`` (``NotImplementedError`` is one) and re-raises unless
:func:`is_unsupported`::

    try:
        acc = torch._int_mm(qx, qw.t())
    except RuntimeError as e:
        if not is_unsupported(e):
            raise
        acc = exact_fallback(qx, qw)

Recognised as "unsupported":

* ``NotImplementedError``: the dispatcher has no kernel of the op for the tensors' backend
  ("Could not run 'aten::_int_mm' with arguments from the 'XPU' backend");
* a ``RuntimeError`` whose message holds one of :data:`UNSUPPORTED_MESSAGES`: torch's own argument checks of
  ``torch._int_mm`` on CUDA (M > 16, K and N multiples of 8), builds and devices without the kernel (cuBLASLt's
  int8 GEMM, tinygemm, FP4 ``_scaled_mm``), a GPU the kernels were not compiled for.

Everything else (out of memory, a CUDA launch failure, a bug) propagates: it is a real failure, and falling back
would hide it or, for a kernel turned off after its first error, slow every later call of the process.
"""

from __future__ import annotations

import torch

#: fragments of the ``RuntimeError`` messages by which torch says an op has no kernel for these arguments here
UNSUPPORTED_MESSAGES = (
    "needs to be greater than",      # torch._int_mm on CUDA: "self.size(0) needs to be greater than 16, ..."
    "multiple of 8",                 # torch._int_mm on CUDA: "... needs to be greater than 0 and a multiple of 8"
    "not compiled for",              # "_int_mm_out_cuda not compiled for CUDA 11060" / "for this platform"
    "not available for build",       # tinygemm: "_weight_int4pack_mm_cuda is not available for build."
    "only supported on",             # "torch._scaled_mm is only supported on CUDA devices with compute capability",
                                     # "_convert_weight_to_int4pack_cuda is only supported on AMD gpu arch ..."
    "STATUS_NOT_SUPPORTED",          # cuBLASLt / hipBLASLt refuse the GEMM on this GPU (CUBLAS_STATUS_NOT_SUPPORTED)
    "STATUS_ARCH_MISMATCH",          # cuBLAS: the GEMM needs a feature this GPU's architecture lacks
    "no kernel image is available",  # the op was not compiled for this GPU's architecture
)

#: fragments of the messages of a failed allocation: CUDA/ROCm/MPS ("out of memory"), the CPU allocator
_OOM_MESSAGES = ("out of memory", "can't allocate memory")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a failed allocation: ``torch.OutOfMemoryError``, ``MemoryError``, or a
    ``RuntimeError`` saying "out of memory" (or the CPU allocator's "can't allocate memory")."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(err, MemoryError) or (oom_type is not None and isinstance(err, oom_type)):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MESSAGES)


def is_unsupported(err: BaseException) -> bool:
    """Whether ``err`` (raised by a torch op) says the op has no kernel for these arguments or this device
    (see the module docstring); never for a failed allocation."""
    if is_out_of_memory(err):
        return False
    if isinstance(err, NotImplementedError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in UNSUPPORTED_MESSAGES)


__all__ = ["UNSUPPORTED_MESSAGES", "is_out_of_memory", "is_unsupported"]
