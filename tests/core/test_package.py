"""The package itself: ``import mpsearch`` changes nothing outside mpsearch."""

import importlib
import sys

import pytest

import mpsearch


def test_import_installs_no_import_hook():
    assert not [f for f in sys.meta_path if type(f).__module__.startswith("mpsearch")]


def test_old_module_paths_are_gone():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mpsearch.profile_store")
    assert mpsearch.__version__
