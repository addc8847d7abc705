"""Fetching public dataset files (standard library only): resumable, retried, checksummed.

:func:`download` fetches an ``http(s)://`` URL, a ``file://`` URL or a plain local path into a
destination file. The bytes go to ``<dest>.part`` first and are renamed onto ``dest`` only once
complete (and, when a sha256 is given, verified), so ``dest`` never holds half a file. An
interrupted download is resumed from the ``.part`` file with an HTTP ``Range`` request.

:func:`extract_zip` unpacks an archive into a directory atomically and refuses members whose
names would escape it ("zip-slip").
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from llmesr import __version__
from llmesr.data.io import atomic_directory, require_file, sha256_file
from llmesr.errors import ChecksumError, LlmesrError

log = logging.getLogger(__name__)

USER_AGENT = f"llmesr/{__version__} (python-urllib)"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


class _Transient(Exception):
    """One attempt failed in a way that a later attempt may fix (network, 5xx, truncation)."""


@dataclass
class _State:
    """What one :func:`download` call remembers between its attempts."""

    validator: str | None = None  # strong ETag or Last-Modified, sent as If-Range on resume


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------

def download(url: str | os.PathLike[str], dest: str | Path, *, sha256: str | None = None,
             progress: bool = True, timeout: float = 60.0, retries: int = 3,
             chunk: int = 1 << 20, backoff: float = 0.5,
             sleep: Callable[[float], None] = time.sleep,
             on_retry: Callable[[str], None] | None = None) -> Path:
    """Fetch ``url`` into the file ``dest`` and return ``dest`` as a Path.

    ``url`` is an ``http://``/``https://`` URL, a ``file://`` URL or a local path (copied).

    * If ``dest`` exists and ``sha256`` is not given or matches, nothing is fetched.
    * The data is written to ``<dest>.part``; a ``.part`` left by an interrupted run is resumed
      with a ``Range`` request (appended on ``206``, restarted on ``200``).
    * Connection errors, timeouts, HTTP 5xx/429 and truncated bodies are retried ``retries``
      more times, sleeping ``backoff``, ``2*backoff``, ``4*backoff`` ... seconds in between
      (``sleep`` is injectable for tests). Other HTTP 4xx errors fail at once.
    * With ``sha256``, a mismatch deletes the ``.part`` file and raises :class:`ChecksumError`.
    * ``on_retry`` receives each "failed, retrying" notice (default: a logging warning); a
      caller with a fallback of its own can pass ``lambda msg: None``.
    """
    dest = Path(dest)
    expected = _normalise_sha256(sha256)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, got {chunk}")
    if dest.is_dir():
        raise LlmesrError(f"download destination is a directory, not a file: {dest}")
    if dest.exists():
        if expected is None or sha256_file(dest) == expected:
            return dest
        log.warning("%s exists but its sha256 is not %s; fetching it again", dest, expected)

    url_text = os.fspath(url)
    local = _local_source(url_text)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if local is not None:
        _copy_local(local, part, progress=progress, chunk=chunk)
    else:
        _fetch(url_text, part, timeout=timeout, retries=retries, chunk=chunk,
               progress=progress, backoff=backoff, sleep=sleep, on_retry=on_retry)

    if expected is not None:
        got = sha256_file(part)
        if got != expected:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"checksum mismatch for {url_text}: sha256 is {got}, expected {expected} (the "
                "download is corrupt, incomplete or a different version of the file; it was "
                "deleted - try again, or download it by hand and pass the local path with "
                "--source)")
    os.replace(part, dest)
    return dest


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.match(value):
        raise LlmesrError(f"not a sha256 digest (64 hex digits): {sha256!r}")
    return value


def _local_source(url: str) -> Path | None:
    """The local file ``url`` names (plain path or ``file://``), or None for http(s)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise LlmesrError(f"cannot download {url}: the URL has no host name")
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LlmesrError(f"cannot use {url}: file:// URLs on another host are not "
                              "supported (mount the share and pass a local path)")
        return Path(urllib.request.url2pathname(parts.path))
    if scheme == "" or (len(scheme) == 1 and _DRIVE_RE.match(url)):  # 'C:\data\x.zip'
        return Path(url).expanduser()
    raise LlmesrError(f"cannot download {url}: unsupported URL scheme '{parts.scheme}' (use "
                      "http://, https://, file:// or a local path)")


def _copy_local(src: Path, part: Path, *, progress: bool, chunk: int) -> None:
    src = require_file(src, "download source")
    total = src.stat().st_size
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout, \
                _bar(total, 0, part, progress) as bar:
            while block := fin.read(chunk):
                fout.write(block)
                bar.update(len(block))
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _bar(total: int | None, initial: int, part: Path, progress: bool) -> tqdm:
    name = part.name[:-len(".part")] if part.name.endswith(".part") else part.name
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not progress, leave=False)


def _fetch(url: str, part: Path, *, timeout: float, retries: int, chunk: int, progress: bool,
           backoff: float, sleep: Callable[[float], None],
           on_retry: Callable[[str], None] | None = None) -> None:
    state = _State()
    attempts = retries + 1
    last: _Transient | None = None
    for attempt in range(attempts):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            notice = (f"downloading {url} failed ({last}); retrying in {delay:.1f} s "
                      f"(attempt {attempt + 1} of {attempts})")
            if on_retry is None:
                log.warning("%s", notice)
            else:
                on_retry(notice)
            sleep(delay)
        try:
            _attempt(url, part, state, timeout=timeout, chunk=chunk, progress=progress)
            return
        except _Transient as e:
            last = e
    kept = ""
    if part.exists() and part.stat().st_size:
        kept = (f" The {part.stat().st_size} bytes received so far are kept in {part}; running "
                "again resumes from there.")
    raise LlmesrError(
        f"could not reach {url}: gave up after {attempts} attempt(s) (last error: {last})."
        f"{kept} You can download the file by hand (e.g. in a web browser) and pass its local "
        "path instead with --source PATH.")


def _attempt(url: str, part: Path, state: _State, *, timeout: float, chunk: int,
             progress: bool) -> None:
    """One request; raises :class:`_Transient` for failures worth retrying."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state.validator:
            headers["If-Range"] = state.validator
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        code, reason = e.code, e.reason
        e.close()
        if code == 416 and offset:
            # The .part does not fit the file on the server (complete already, or the file
            # changed size): start from scratch. With offset 0 there is no Range, no 416 loop.
            log.warning("server refused to resume %s at byte %d; starting over", url, offset)
            part.unlink(missing_ok=True)
            return _attempt(url, part, state, timeout=timeout, chunk=chunk, progress=progress)
        if code == 429 or 500 <= code <= 599:
            raise _Transient(f"HTTP {code} {reason}") from None
        raise LlmesrError(f"cannot download {url}: HTTP {code} {reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise LlmesrError(f"cannot download {url}: the server's TLS certificate could not "
                              f"be verified ({e.reason.verify_message}); download the file by "
                              "hand and pass its local path with --source PATH") from None
        raise _Transient(_describe(e.reason)) from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, bad status lines
        raise _Transient(_describe(e)) from None

    with response:
        status = response.status
        length = _int_or_none(response.headers.get("Content-Length"))
        if status == 206:
            start, end, total = _parse_content_range(response.headers.get("Content-Range"))
            if not offset or start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"server sent bytes from {start} instead of {offset}; "
                                 "starting over")
            if length is None and end is not None:
                length = end - start + 1
            mode = "ab"
        else:  # 200 (a Range request ignored, or If-Range no longer valid): start over
            offset, total, mode = 0, length, "wb"
        if total is None and length is not None:
            total = offset + length
        etag = response.headers.get("ETag")
        if etag and not etag.startswith("W/"):
            state.validator = etag
        elif response.headers.get("Last-Modified"):
            state.validator = response.headers.get("Last-Modified")

        received = 0
        with open(part, mode) as f, _bar(total, offset, part, progress) as bar:
            try:
                while block := response.read(chunk):
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise _Transient(f"connection lost after {offset + received} bytes "
                                 f"({_describe(e)})") from None
    if length is not None and received < length:
        raise _Transient(f"transfer cut short after {offset + received} of "
                         f"{offset + length} bytes")


def _describe(err: object) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, http.client.IncompleteRead):
        return f"incomplete read ({len(err.partial)} bytes)"
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``'bytes 100-199/200'`` -> ``(100, 199, 200)``; unknown parts are None."""
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None, None, None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


# --------------------------------------------------------------------------------------------
# zip extraction
# --------------------------------------------------------------------------------------------

_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
               NotImplementedError, RuntimeError)


def extract_zip(archive: str | Path, dest_dir: str | Path, members: list[str] | None = None,
                *, overwrite: bool = False) -> Path:
    """Extract ``archive`` (all of it, or ``members``) into ``dest_dir`` and return it.

    ``members`` are entry names; a name that is a directory in the archive (``'ml-100k'`` or
    ``'ml-100k/'``) selects everything under it. Names that are absolute or contain ``..``
    are refused before anything is written. The files are extracted into a temporary
    directory next to ``dest_dir`` that is renamed onto it only when everything succeeded.
    An existing non-empty ``dest_dir`` is an error unless ``overwrite`` (then it is replaced).
    """
    archive = require_file(archive, "zip archive")
    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        if not dest_dir.is_dir():
            raise LlmesrError(f"cannot extract {archive}: {dest_dir} exists and is not a "
                              "directory")
        if not overwrite and any(dest_dir.iterdir()):
            raise LlmesrError(f"cannot extract {archive}: {dest_dir} already exists and is not "
                              "empty (remove it, or extract with overwrite=True)")
    try:
        zf = zipfile.ZipFile(archive)
    except (*_ZIP_ERRORS, OSError) as e:
        raise LlmesrError(f"{archive} is not a readable zip archive ({e}); it is probably "
                          "corrupt or truncated - download it again") from None
    with zf:
        chosen = _select_members(zf, members, archive)
        plan = [(info, _safe_parts(info.filename, archive)) for info in chosen]
        with atomic_directory(dest_dir, overwrite=True) as tmp:
            for info, parts in plan:
                if not parts:
                    continue
                target = tmp.joinpath(*parts)
                try:
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except _ZIP_ERRORS as e:
                    raise LlmesrError(f"{archive}: cannot extract {info.filename} ({e}); the "
                                      "archive is probably corrupt or truncated - download it "
                                      "again") from None
                except OSError as e:
                    raise LlmesrError(f"{archive}: cannot extract {info.filename} into "
                                      f"{dest_dir}: {e}") from None
    return dest_dir


def _select_members(zf: zipfile.ZipFile, members: list[str] | None,
                    archive: Path) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if members is None:
        return infos
    if isinstance(members, str):
        members = [members]
    chosen: dict[str, zipfile.ZipInfo] = {}
    missing = []
    for name in members:
        prefix = name.rstrip("/") + "/"
        hits = [i for i in infos if i.filename == name or i.filename.startswith(prefix)]
        if not hits:
            missing.append(name)
        for i in hits:
            chosen.setdefault(i.filename, i)
    if missing:
        names = [i.filename for i in infos]
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
        raise LlmesrError(f"{archive} has no member {', '.join(map(repr, missing))} "
                          f"(it contains: {shown or 'nothing'})")
    return [i for i in infos if i.filename in chosen]


def _safe_parts(name: str, archive: Path) -> list[str]:
    """Path components of a member name; refuses names that would land outside the target."""
    if name.startswith(("/", "\\")) or _DRIVE_RE.match(name):
        raise LlmesrError(f"{archive}: refusing to extract member {name!r} with an absolute "
                          "path (unsafe archive)")
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise LlmesrError(f"{archive}: refusing to extract member {name!r}: its '..' would "
                          "write outside the destination (unsafe archive, 'zip-slip')")
    return parts
