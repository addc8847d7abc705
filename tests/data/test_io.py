"""File helpers: line numbers on bad bytes, gzip, truncated archives, atomic writes."""

from __future__ import annotations

import gzip

import pytest

from llmesr.data.io import atomic_directory, iter_lines, sha256_file, verify_sha256
from llmesr.errors import ChecksumError, DataFormatError


def test_bad_utf8_names_its_line(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"a\nb\n\nc\nd\xff\xfe\n" + b"e\n" * 10000)
    with pytest.raises(DataFormatError, match=r"x.txt:5: not valid utf-8"):
        list(iter_lines(f))


def test_gzip_and_blank_lines(tmp_path):
    f = tmp_path / "x.gz"
    with gzip.open(f, "wt") as g:
        g.write("one\n\ntwo\r\n")
    assert list(iter_lines(f)) == [(1, "one"), (3, "two")]


def test_truncated_gzip(tmp_path):
    f = tmp_path / "x.gz"
    data = gzip.compress(("line\n" * 50000).encode())
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="truncated"):
        list(iter_lines(f))


def test_checksums(tmp_path):
    f = tmp_path / "a"
    f.write_bytes(b"abc")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(f) == digest
    verify_sha256(f, digest)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        verify_sha256(f, "0" * 64)


def test_atomic_directory_cleans_up(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "done").write_text("x")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["done"]
