"""What mpsearch reads as YAML is a regular file of bounded size, read with a bounded read: a device, a pipe, a
folder, a sparse giant or a file far larger than any plan is a one-line error, at once (each case hung or read
gigabytes before)."""

from __future__ import annotations

import os
import time

import pytest

from mpsearch.errors import MpsearchError, PlanError
from mpsearch.io import load_yaml
from mpsearch.plan import Plan


def _quick_error(call, match, error=MpsearchError):
    t0 = time.monotonic()
    with pytest.raises(error, match=match) as e:
        call()
    assert time.monotonic() - t0 < 5
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_symlink_to_dev_zero_is_refused_without_reading(tmp_path):
    os.symlink("/dev/zero", tmp_path / "p.yaml")
    msg = _quick_error(lambda: Plan.load(tmp_path / "p.yaml"), "is a device, expected a regular file", PlanError)
    assert "p.yaml" in msg


def test_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "p.yaml")
    _quick_error(lambda: load_yaml(tmp_path / "p.yaml", "plan"), "is a pipe, expected a regular file")


def test_a_folder_is_refused(tmp_path):
    _quick_error(lambda: load_yaml(tmp_path, "plan"), "is a folder, expected a regular file")


def test_a_sparse_giant_is_refused_by_its_size(tmp_path):
    path = tmp_path / "p.yaml"
    with open(path, "wb") as f:
        f.write(b"schema_version: 1\n# ")
        f.truncate(2 << 30)
    _quick_error(lambda: Plan.load(path), "2,147,483,648 bytes, more than the 16,777,216 bytes", PlanError)


def test_a_file_over_the_cap_is_refused_and_one_at_it_read(tmp_path):
    from mpsearch.io import MAX_YAML_BYTES, read_regular_text

    path = tmp_path / "x.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * (MAX_YAML_BYTES - 5))
    assert load_yaml(path) == {"a": 1}  # exactly the cap: read
    path.write_bytes(b"a: 1\n" + b"#" * (MAX_YAML_BYTES - 4))
    _quick_error(lambda: load_yaml(path), "more than the 16,777,216 bytes")
    _quick_error(lambda: read_regular_text(path, max_bytes=4), "more than the 4 bytes")


def test_text_that_is_not_utf8_or_missing_is_one_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(bytes(range(256)))
    _quick_error(lambda: load_yaml(path, "plan"), "not UTF-8 text")
    _quick_error(lambda: load_yaml(tmp_path / "none.yaml", "plan"), "does not exist")


def test_a_prompts_file_is_read_the_same_bounded_way(tmp_path):
    """A prompts file that is /dev/zero or a pipe hung (reading forever, or waiting for a writer)."""
    from mpsearch.errors import UsageError
    from mpsearch.prompts import read_prompts

    os.symlink("/dev/zero", tmp_path / "zero.txt")
    _quick_error(lambda: read_prompts(tmp_path / "zero.txt"), "is a device, expected a regular file", UsageError)
    os.mkfifo(tmp_path / "fifo.txt")
    _quick_error(lambda: read_prompts(tmp_path / "fifo.txt"), "is a pipe, expected a regular file", UsageError)
    (tmp_path / "ok.txt").write_text("a cat\n# no\n\na dog\n")
    assert read_prompts(tmp_path / "ok.txt") == ["a cat", "a dog"]
