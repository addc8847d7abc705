"""File helpers shared by readers and artifacts: checksums, compressed text, atomic writes."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from llmesr.errors import ChecksumError, DataFormatError, LlmesrError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`ChecksumError` if ``path`` does not have sha256 ``expected``."""
    got = sha256_file(path)
    if got != expected.lower():
        raise ChecksumError(f"checksum mismatch for {path}: sha256 is {got}, expected {expected} "
                            "(the file is corrupt, truncated or a different version; "
                            "download it again)")


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a Path if it is an existing file, else raise a clear error."""
    p = Path(path)
    if not p.exists():
        raise LlmesrError(f"{what} not found: {p}")
    if not p.is_file():
        raise LlmesrError(f"{what} is not a file: {p}")
    return p


def require_dir(path: str | Path, what: str = "directory") -> Path:
    p = Path(path)
    if not p.exists():
        raise LlmesrError(f"{what} not found: {p}")
    if not p.is_dir():
        raise LlmesrError(f"{what} is not a directory: {p}")
    return p


def open_text(path: str | Path, encoding: str = "utf-8") -> IO[str]:
    """Open a text file for reading, transparently decompressing ``.gz`` (by magic bytes)."""
    p = require_file(path)
    with open(p, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding=encoding, errors="strict",
                                newline="")
    return open(p, encoding=encoding, newline="")


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for binary reading, transparently decompressing ``.gz`` (by magic bytes)."""
    p = require_file(path)
    with open(p, "rb") as f:
        magic = f.read(2)
    return gzip.open(p, "rb") if magic == b"\x1f\x8b" else open(p, "rb")


def iter_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, without the line break), skipping blank lines.

    Lines are decoded one at a time so a decoding error names its exact line; decompression
    errors are reported with the file name and the last good line.
    """
    lineno = 0
    try:
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode(encoding).rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise DataFormatError(f"{path}:{lineno}: not valid {encoding} text "
                                          f"({e.reason})") from None
                if line.strip():
                    yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(f"{path}: cannot read compressed data after line {lineno} "
                              f"({e}); the file is probably truncated") from None


def provenance() -> dict[str, str]:
    """When and with what an artifact was made (for every manifest)."""
    import datetime as _dt
    import platform

    from llmesr import __version__

    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "llmesr_version": __version__, "python": platform.python_version()}


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and rename, so readers never see half a file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``target`` only on success.

    On any exception the temporary directory is removed and an existing ``target`` is left as
    it was, so a failed or interrupted run never leaves something that looks complete.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise LlmesrError(f"output directory already exists: {target} (pass --overwrite to "
                          "replace it)")
    if target.exists() and not target.is_dir():
        raise LlmesrError(f"output path exists and is not a directory: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
