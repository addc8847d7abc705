"""A kill at any instant of atomic_directory's swap leaves the old or the new folder whole,
and the next start (a reader, or the next write) repairs it (issue: crash safety)."""

from __future__ import annotations

import os

import pytest

from llmesr.data import io as dio
from llmesr.data.io import atomic_directory, recover_output


def _fill(folder, text):
    (folder / "manifest.json").write_text(text)


def _state_after(tmp_path, steps):
    """The folders a kill leaves after the first ``steps`` renames of a replacement of
    target (holding 'old') by 'new'."""
    target = tmp_path / "ds"
    target.mkdir()
    _fill(target, "old")
    real = os.replace
    calls = []

    def replace(a, b):
        if len(calls) == steps:
            raise KeyboardInterrupt("killed")          # the process stops here
        calls.append((a, b))
        real(a, b)

    dio.os.replace = replace
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_directory(target, overwrite=True) as tmp:
                _fill(tmp, "new")
                if steps == 0:
                    raise KeyboardInterrupt("killed while filling")
    finally:
        dio.os.replace = real
    return target


@pytest.mark.parametrize("steps,want", [(0, "old"), (1, "new"), (2, "new")])
def test_recovered_after_a_kill_at_each_step(tmp_path, steps, want):
    # the renames after the commit run outside any cleanup, so an exception there leaves what
    # a kill leaves; a kill while filling leaves the partial folder, made here by hand
    target = _state_after(tmp_path, steps)
    if steps == 0:
        (tmp_path / ".ds.partial").mkdir()
        _fill(tmp_path / ".ds.partial", "half")
    assert recover_output(target)
    assert (target / "manifest.json").read_text() == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_old_pid_leftover_of_earlier_versions_restored(tmp_path):
    old = tmp_path / f".ds.old-{os.getpid() + 1}"
    old.mkdir()
    _fill(old, "old")
    assert recover_output(tmp_path / "ds")
    assert (tmp_path / "ds" / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_the_next_write_repairs_first(tmp_path):
    target = _state_after(tmp_path, 2)                  # ds missing, .ds.new holds 'new'
    assert not target.exists()
    with pytest.raises(Exception, match="already exists"):
        with atomic_directory(target) as tmp:          # without overwrite: refuses
            _fill(tmp, "third")
    assert (target / "manifest.json").read_text() == "new"
    with atomic_directory(target, overwrite=True) as tmp:
        _fill(tmp, "third")
    assert (target / "manifest.json").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_load_dataset_repairs(tmp_path):
    from llmesr.data.artifact import load_dataset
    from llmesr.errors import LlmesrError

    target = _state_after(tmp_path, 2)
    with pytest.raises(LlmesrError, match="corrupt"):  # our stand-in manifest is not JSON
        load_dataset(target)
    assert (target / "manifest.json").read_text() == "new"
