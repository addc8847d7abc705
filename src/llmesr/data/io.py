"""File helpers shared by readers and artifacts: checksums, compressed text, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import glob
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
        after = f" after line {lineno}" if lineno else ""
        raise DataFormatError(f"{path}: cannot read the compressed data{after} ({e}); the "
                              "file is probably truncated") from None


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """A whole text file (``.gz`` decompressed), with clear errors: an undecodable byte names
    its line, a truncated or corrupt archive says so."""
    try:
        with open_binary(path) as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(f"{path}: cannot read the compressed data ({e}); the file is "
                              "probably truncated") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(f"{path}:{line}: not valid {encoding} text ({e.reason}); "
                              f"convert the file to {encoding}") from None


def first_char(path: str | Path, encoding: str = "utf-8") -> str:
    """The first non-blank character of a text file ('' if none), read safely."""
    for _lineno, line in iter_lines(path, encoding):
        return line.lstrip()[:1]
    return ""


def provenance() -> dict[str, str]:
    """When and with what an artifact was made (for every manifest)."""
    import datetime as _dt
    import platform

    from llmesr import __version__

    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "llmesr_version": __version__, "python": platform.python_version()}


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it
    os.umask(mask)
    return mask


def public_mode(directory: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give: 0666 (0777 for folders) less the umask.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600 files and 0700 folders; whatever is renamed
    into place from them gets this mode first, so outputs are as readable as any other file.
    """
    return (0o777 if directory else 0o666) & ~current_umask()


def describe_os_error(e: OSError, action: str) -> str:
    """One line for an operating-system error: what failed, on which path, and a hint."""
    where = e.filename if e.filename is not None else ""
    why = e.strerror or type(e).__name__
    hint = ""
    if isinstance(e, NotADirectoryError):
        hint = " (a part of that path is a file, not a folder)"
    elif isinstance(e, FileExistsError):
        hint = " (something that is not a folder is in the way)"
    elif isinstance(e, IsADirectoryError):
        hint = " (it is a folder; a file was expected)"
    elif isinstance(e, PermissionError):
        hint = " (no permission: choose another place or fix the permissions)"
    elif e.errno == errno.ENOSPC:
        hint = " (the disk is full)"
    elif e.errno == errno.EROFS:
        hint = " (the file system is read-only)"
    return f"cannot {action}: {where}{': ' if where else ''}{why}{hint}"


@contextlib.contextmanager
def os_errors_as_user_errors(action: str) -> Iterator[None]:
    """Re-raise an :class:`OSError` inside the block as a one-line :class:`LlmesrError`.

    For the writing stages of a command, where an unwritable, missing or misplaced output
    folder is the user's to fix, not a bug.
    """
    try:
        yield
    except OSError as e:
        raise LlmesrError(describe_os_error(e, action)) from None


def make_dirs(path: str | Path, what: str = "folder") -> Path:
    """``mkdir -p`` that explains, in one line, why a folder cannot be made."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise LlmesrError(f"cannot create the {what} {p}: a file of that name is in the way")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LlmesrError(describe_os_error(e, f"create the {what}")) from None
    return p


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO[Any]]:
    """Write ``path`` through a temporary file in the same folder, renamed into place on
    success (readers never see half a file; a failure leaves the old file as it was). The
    file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), public_mode())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and rename, so readers never see half a file."""
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, ensure_ascii=False)
        f.write("\n")


def recover_output(target: str | Path) -> bool:
    """Finish or undo an :func:`atomic_directory` swap of ``target`` that a kill interrupted
    (and remove its leftovers, those of older versions included); returns whether ``target``
    exists. Readers of such folders call it first, so the next start repairs them."""
    from llmesr.training.checkpoint import recover_directory   # here: it imports this module

    target = Path(target)
    legacy = sorted(target.parent.glob(f".{glob.escape(target.name)}.old-*"))
    return recover_directory(target, legacy=legacy)


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``target`` only on success.

    On any exception the temporary directory is removed and an existing ``target`` is left as
    it was, so a failed or interrupted run never leaves something that looks complete. The
    swap is the one of ``llmesr.training.checkpoint.replace_directory`` (fill
    ``.NAME.partial``; rename it ``.NAME.new``, from which instant the new content counts;
    move the old folder to ``.NAME.old``; rename ``.NAME.new`` to ``NAME``; delete the old),
    so a kill at any instant leaves the old or the new folder whole, and
    :func:`recover_output` (called here and by the readers) completes or undoes it.
    """
    from llmesr.training.checkpoint import swap_names

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise LlmesrError(f"output path exists and is not a directory: {target}")
    if target.parent.is_dir():
        recover_output(target)
    if target.exists() and not overwrite:
        raise LlmesrError(f"output directory already exists: {target} (pass --overwrite to "
                          "replace it)")
    make_dirs(target.parent, "output folder")
    tmp, new, old = swap_names(target)
    try:
        tmp.mkdir()
    except OSError as e:
        raise LlmesrError(describe_os_error(e, "write the output directory")) from None
    try:
        yield tmp
        os.replace(tmp, new)                  # committed: from here the new folder counts
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
