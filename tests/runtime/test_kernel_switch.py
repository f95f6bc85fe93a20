"""MPSEARCH_KERNELS / select_kernels: one switch over the kernel paths, mapped onto the per-kernel settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpsearch.errors import UsageError
from mpsearch.runtime import kernels
from mpsearch.runtime.kernels.choice import parse_kernel_spec
from mpsearch.runtime.kernels.cpu import int8, loops, nvfp4

ROOT = Path(__file__).resolve().parents[2]
OLD_VARS = ("MPSEARCH_KERNELS", "MPSEARCH_CPU_INT8", "MPSEARCH_CPU_NVFP4", "MPSEARCH_JIT")


def _settings_in_a_fresh_process(**env_vars) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OLD_VARS}
    env.update(env_vars, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    code = ("import json\nfrom mpsearch.runtime import kernels\n"
            "print(json.dumps([kernels.kernel_settings(), kernels.find_kernel('cpu', 'int8', True) is None]))")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_parse():
    assert parse_kernel_spec("") == {}
    assert parse_kernel_spec(" int8=float , jit=off,") == {"int8": "float", "jit": "off"}
    assert parse_kernel_spec("reference,nvfp4=bf16") == {"kernels": "reference", "nvfp4": "bf16"}
    for bad in ("int8=fast", "cuda=off", "jit", "int8:float"):
        with pytest.raises(UsageError, match="MPSEARCH_KERNELS: .* is not a kernel setting; expected") as e:
            parse_kernel_spec(bad)
        assert "\n" not in str(e.value)


def test_unset_leaves_every_path_as_before():
    settings, no_int8_kernel = _settings_in_a_fresh_process()
    assert settings == {"kernels": "on", "int8": "auto", "nvfp4": "auto", "jit": "on"} and not no_int8_kernel


def test_environment_selects_the_paths():
    settings, _ = _settings_in_a_fresh_process(MPSEARCH_KERNELS="int8=float,nvfp4=bf16,jit=off")
    assert settings == {"kernels": "on", "int8": "float", "nvfp4": "bf16", "jit": "off"}
    settings, no_int8_kernel = _settings_in_a_fresh_process(MPSEARCH_KERNELS="reference")
    assert settings["kernels"] == "reference" and no_int8_kernel


def test_the_older_per_kernel_variables_are_gone():
    """MPSEARCH_KERNELS is the one switch: MPSEARCH_CPU_INT8, MPSEARCH_CPU_NVFP4 and MPSEARCH_JIT change nothing."""
    settings, _ = _settings_in_a_fresh_process(MPSEARCH_KERNELS="int8=float,jit=on", MPSEARCH_CPU_INT8="int_mm",
                                               MPSEARCH_CPU_NVFP4="bf16", MPSEARCH_JIT="0")
    assert settings == {"kernels": "on", "int8": "float", "nvfp4": "auto", "jit": "on"}
    settings, _ = _settings_in_a_fresh_process(MPSEARCH_CPU_INT8="int_mm", MPSEARCH_CPU_NVFP4="bf16",
                                               MPSEARCH_JIT="0")
    assert settings == {"kernels": "on", "int8": "auto", "nvfp4": "auto", "jit": "on"}


def test_select_kernels_from_python():
    before = kernels.kernel_settings()
    saved = (dict(int8._STATE), dict(nvfp4._STATE), dict(loops._STATE), dict(kernels._STATE))
    try:
        assert kernels.select_kernels("int8=float,nvfp4=float,jit=off") == {
            "kernels": before["kernels"], "int8": "float", "nvfp4": "float", "jit": "off"}
        assert not int8.uses_int_mm() and not loops.jit_enabled()
        kernels.select_kernels("reference")
        assert kernels.find_kernel("cpu", "int8", True) is None
        with pytest.raises(UsageError, match="select_kernels: 'jit=maybe'"):
            kernels.select_kernels("int8=int_mm,jit=maybe")
        assert kernels.kernel_settings()["int8"] == "float"  # nothing changed by the refused spec
    finally:
        for state, old in zip((int8._STATE, nvfp4._STATE, loops._STATE, kernels._STATE), saved):
            state.clear()
            state.update(old)
    assert kernels.kernel_settings() == before


def test_using_kernels_sets_the_named_paths_inside_a_block_only():
    """The block form of select_kernels (it replaces the per-kernel ``using_*`` and ``*_path()`` toggles): the
    settings it names hold inside, and after it each is as it was, the environment's included."""
    before = kernels.kernel_settings()
    path_before = int8._STATE["path"]
    with kernels.using_kernels("int8=float,jit=off") as inside:
        assert inside == kernels.kernel_settings() == {**before, "int8": "float", "jit": "off"}
        assert not int8.uses_int_mm() and not loops.jit_enabled()
        with kernels.using_kernels("reference"):
            assert kernels.find_kernel("cpu", "int8", True) is None
            assert kernels.kernel_settings()["int8"] == "float"  # settings it does not name stay
        assert kernels.find_kernel("cpu", "int8", True) is not None
    assert kernels.kernel_settings() == before and int8._STATE["path"] == path_before
    with pytest.raises(UsageError, match="using_kernels: 'nvfp4=fp8' is not a kernel setting"), \
            kernels.using_kernels("jit=off,nvfp4=fp8"):
        pass
    assert kernels.kernel_settings() == before  # nothing changed by the refused spec


def test_the_per_kernel_toggles_are_gone():
    """One way to choose a path from Python: select_kernels / using_kernels (reference_only is its shorthand)."""
    assert not hasattr(int8, "cpu_int8_path") and not hasattr(int8, "using_cpu_int8_path")
    assert not hasattr(nvfp4, "cpu_nvfp4_path") and not hasattr(nvfp4, "using_cpu_nvfp4_path")
    assert not hasattr(loops, "using_jit")
