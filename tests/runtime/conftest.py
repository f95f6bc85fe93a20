"""Fixtures shared by the runtime tests."""

import pytest

from mpsearch.runtime.kernels.cpu_int8 import using_cpu_int8_path


@pytest.fixture
def int_mm():
    """INT8 on torch._int_mm (what the int8 CPU kernels, compiled or not, run), on any CPU."""
    with using_cpu_int8_path("int_mm"):
        yield
