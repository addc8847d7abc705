"""Tests for llmesr.data.download against a real HTTP server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmesr.data.download import download, extract_zip
from llmesr.errors import ChecksumError, LlmesrError

DATA = bytes((i * 7 + i // 251) % 256 for i in range(100_000))
DATA_SHA = hashlib.sha256(DATA).hexdigest()
CHUNK = 4096


# --------------------------------------------------------------------------------------------
# a small HTTP server with scripted misbehaviour
# --------------------------------------------------------------------------------------------

@dataclass
class Route:
    data: bytes = DATA
    status: int | None = None     # always answer with this error status (e.g. 404)
    fail_times: int = 0           # answer fail_status this many times first
    fail_status: int = 503
    cut_once_at: int | None = None  # first GET: full Content-Length, only this many bytes
    ranges: bool = True           # honour Range requests (else always 200 + whole body)
    delay_first: float = 0.0      # first GET: sleep this long before answering
    etag: str | None = None


@dataclass
class Server:
    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    # (path, Range header, If-Range header) of every request, in order
    log: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path

    def requests(self, path: str | None = None) -> list[tuple[str, str | None, str | None]]:
        with self.lock:
            return [r for r in self.log if path is None or r[0] == path]


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; closing ends the body

        def log_message(self, format, *args):  # keep test output quiet
            pass

        def do_GET(self):  # noqa: N802
            with server.lock:
                n_before = sum(1 for r in server.log if r[0] == self.path)
                server.log.append((self.path, self.headers.get("Range"),
                                   self.headers.get("If-Range")))
                route = server.routes.get(self.path)
                if route is not None and route.fail_times > 0:
                    route.fail_times -= 1
                    fail = route.fail_status
                else:
                    fail = None
            if route is None:
                self.send_error(404, "Not Found")
                return
            if route.delay_first and n_before == 0:
                time.sleep(route.delay_first)
            if route.status is not None:
                self.send_error(route.status)
                return
            if fail is not None:
                self.send_error(fail)
                return
            data, start = route.data, 0
            rng = self.headers.get("Range")
            if rng and route.ranges:
                assert rng.startswith("bytes=") and rng.endswith("-"), rng
                start = int(rng[len("bytes="):-1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            if route.etag:
                self.send_header("ETag", route.etag)
            self.end_headers()
            if route.cut_once_at is not None and n_before == 0:
                self.wfile.write(body[:route.cut_once_at])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server():
    srv = Server(base="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(srv))
    srv.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def _dl(url, dest, sleeps, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("chunk", CHUNK)
    kw.setdefault("timeout", 5.0)
    return download(url, dest, sleep=sleeps.append, **kw)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

def test_plain_download_with_checksum(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route()
    dest = tmp_path / "sub" / "f.zip"
    got = _dl(server.url("/f.zip"), dest, sleeps, sha256=DATA_SHA.upper())
    assert got == dest
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "sub" / "f.zip.part").exists()
    assert server.requests() == [("/f.zip", None, None)]
    assert sleeps == []


def test_progress_bar_on(server, tmp_path, sleeps, capsys):
    server.routes["/f.zip"] = Route()
    dest = _dl(server.url("/f.zip"), tmp_path / "f.zip", sleeps, progress=True)
    assert dest.read_bytes() == DATA
    assert "f.zip" in capsys.readouterr().err


def test_checksum_mismatch_leaves_nothing(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route()
    dest = tmp_path / "f.zip"
    wrong = "0" * 64
    url = server.url("/f.zip")
    with pytest.raises(ChecksumError) as ei:
        _dl(url, dest, sleeps, sha256=wrong)
    msg = str(ei.value)
    assert url in msg and DATA_SHA in msg and wrong in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert len(server.requests()) == 1


def test_bad_sha256_argument(server, tmp_path, sleeps):
    with pytest.raises(LlmesrError, match="not a sha256"):
        _dl(server.url("/f.zip"), tmp_path / "f.zip", sleeps, sha256="abc")
    assert server.requests() == []


def test_existing_file_skips_network(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route()
    dest = tmp_path / "f.zip"
    dest.write_bytes(b"already here")
    assert _dl(server.url("/f.zip"), dest, sleeps) == dest
    assert _dl(server.url("/f.zip"), dest, sleeps,
               sha256=hashlib.sha256(b"already here").hexdigest()) == dest
    assert dest.read_bytes() == b"already here"
    assert server.requests() == []


def test_existing_file_with_wrong_checksum_is_fetched_again(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route()
    dest = tmp_path / "f.zip"
    dest.write_bytes(b"stale")
    _dl(server.url("/f.zip"), dest, sleeps, sha256=DATA_SHA)
    assert dest.read_bytes() == DATA
    assert len(server.requests()) == 1


@pytest.mark.parametrize("status", [503, 429, 500])
def test_retry_after_transient_status(server, tmp_path, sleeps, status):
    server.routes["/f.zip"] = Route(fail_times=2, fail_status=status)
    dest = _dl(server.url("/f.zip"), tmp_path / "f.zip", sleeps, sha256=DATA_SHA)
    assert dest.read_bytes() == DATA
    assert len(server.requests()) == 3
    assert sleeps == [0.5, 1.0]


def test_gives_up_after_last_retry(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route(fail_times=100)
    url = server.url("/f.zip")
    with pytest.raises(LlmesrError) as ei:
        _dl(url, tmp_path / "f.zip", sleeps, retries=3)
    msg = str(ei.value)
    assert msg.startswith(f"could not reach {url}: gave up after 4 attempt(s)")
    assert "HTTP 503" in msg and "by hand" in msg and "--source" in msg
    assert len(server.requests()) == 4
    assert sleeps == [0.5, 1.0, 2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_404_fails_at_once(server, tmp_path, sleeps):
    url = server.url("/missing.zip")
    with pytest.raises(LlmesrError) as ei:
        _dl(url, tmp_path / "f.zip", sleeps)
    assert str(ei.value) == f"cannot download {url}: HTTP 404 Not Found"
    assert len(server.requests()) == 1
    assert sleeps == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_403_fails_at_once(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route(status=403)
    url = server.url("/f.zip")
    with pytest.raises(LlmesrError) as ei:
        _dl(url, tmp_path / "f.zip", sleeps)
    assert str(ei.value) == f"cannot download {url}: HTTP 403 Forbidden"
    assert len(server.requests()) == 1 and sleeps == []


def test_truncated_transfer_is_resumed(server, tmp_path, sleeps):
    cut = 30_000
    server.routes["/f.zip"] = Route(cut_once_at=cut, etag='"v1"')
    dest = _dl(server.url("/f.zip"), tmp_path / "f.zip", sleeps, sha256=DATA_SHA)
    assert dest.read_bytes() == DATA
    assert server.requests() == [("/f.zip", None, None), ("/f.zip", f"bytes={cut}-", '"v1"')]
    assert sleeps == [0.5]
    assert not (tmp_path / "f.zip.part").exists()


def test_truncated_transfer_without_retries_is_not_success(server, tmp_path, sleeps):
    cut = 30_000
    server.routes["/f.zip"] = Route(cut_once_at=cut)
    url = server.url("/f.zip")
    dest = tmp_path / "f.zip"
    with pytest.raises(LlmesrError, match=r"(cut short|connection lost) after 30000 "):
        _dl(url, dest, sleeps, retries=0)
    assert not dest.exists()
    part = tmp_path / "f.zip.part"
    assert part.read_bytes() == DATA[:cut]
    # a later run resumes from the .part file
    _dl(url, dest, sleeps, retries=0)
    assert dest.read_bytes() == DATA
    assert [r[1] for r in server.requests()] == [None, f"bytes={cut}-"]


def test_part_file_from_earlier_run_is_resumed(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route()
    (tmp_path / "f.zip.part").write_bytes(DATA[:12_345])
    dest = _dl(server.url("/f.zip"), tmp_path / "f.zip", sleeps, sha256=DATA_SHA)
    assert dest.read_bytes() == DATA
    assert server.requests() == [("/f.zip", "bytes=12345-", None)]


def test_range_ignored_starts_over(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route(ranges=False)
    (tmp_path / "f.zip.part").write_bytes(b"garbage from some other file")
    dest = _dl(server.url("/f.zip"), tmp_path / "f.zip", sleeps, sha256=DATA_SHA)
    assert dest.read_bytes() == DATA
    assert [r[1] for r in server.requests()] == ["bytes=28-"]


def test_oversized_part_file_416_starts_over(server, tmp_path, sleeps):
    server.routes["/f.zip"] = Route()
    (tmp_path / "f.zip.part").write_bytes(DATA + b"extra")
    dest = _dl(server.url("/f.zip"), tmp_path / "f.zip", sleeps, sha256=DATA_SHA)
    assert dest.read_bytes() == DATA
    assert [r[1] for r in server.requests()] == [f"bytes={len(DATA) + 5}-", None]
    assert sleeps == []


def test_timeout_is_retried(server, tmp_path, sleeps):
    server.routes["/slow"] = Route(delay_first=0.6)
    dest = _dl(server.url("/slow"), tmp_path / "f.zip", sleeps, timeout=0.2)
    assert dest.read_bytes() == DATA
    assert len(server.requests()) == 2
    assert sleeps == [0.5]


def test_connection_refused_is_retried_then_explained(tmp_path, sleeps):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/f.zip"
    with pytest.raises(LlmesrError) as ei:
        _dl(url, tmp_path / "f.zip", sleeps, retries=2, backoff=0.01)
    msg = str(ei.value)
    assert f"could not reach {url}: gave up after 3 attempt(s)" in msg
    assert "--source" in msg
    assert sleeps == [0.01, 0.02]


def test_unsupported_scheme(tmp_path, sleeps):
    with pytest.raises(LlmesrError, match="unsupported URL scheme 'ftp'"):
        _dl("ftp://127.0.0.1/f.zip", tmp_path / "f.zip", sleeps)


# --------------------------------------------------------------------------------------------
# local sources
# --------------------------------------------------------------------------------------------

def test_local_path_and_file_url(tmp_path, sleeps):
    src = tmp_path / "src dir" / "ml-100k.zip"
    src.parent.mkdir()
    src.write_bytes(DATA)
    a = _dl(str(src), tmp_path / "a.zip", sleeps, sha256=DATA_SHA)
    assert a.read_bytes() == DATA
    b = _dl(src.as_uri(), tmp_path / "b.zip", sleeps, sha256=DATA_SHA)
    assert src.as_uri().startswith("file:///") and "%20" in src.as_uri()
    assert b.read_bytes() == DATA
    c = _dl(src, tmp_path / "c.zip", sleeps)  # a Path object
    assert c.read_bytes() == DATA
    assert not list(tmp_path.glob("*.part"))


def test_local_checksum_mismatch_and_missing(tmp_path, sleeps):
    src = tmp_path / "x.bin"
    src.write_bytes(b"hello")
    with pytest.raises(ChecksumError, match="checksum mismatch for .*x.bin"):
        _dl(str(src), tmp_path / "y.bin", sleeps, sha256="1" * 64)
    assert not (tmp_path / "y.bin").exists() and not (tmp_path / "y.bin.part").exists()
    with pytest.raises(LlmesrError, match="download source not found"):
        _dl(str(tmp_path / "nope.zip"), tmp_path / "z.bin", sleeps)


# --------------------------------------------------------------------------------------------
# zip extraction
# --------------------------------------------------------------------------------------------

def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_extract_all_and_members(tmp_path):
    entries = {"ml-100k/": b"", "ml-100k/u.data": b"1\t2\t5\t881250949\n",
               "ml-100k/u.item": b"1|Toy Story (1995)|\n", "README": b"read me"}
    arc = _zip(tmp_path / "a.zip", entries)
    out = extract_zip(arc, tmp_path / "out")
    assert out == tmp_path / "out"
    assert _tree(out) == {k: v for k, v in entries.items() if not k.endswith("/")}
    sub = extract_zip(arc, tmp_path / "sub", members=["ml-100k/u.item", "README"])
    assert _tree(sub) == {"ml-100k/u.item": entries["ml-100k/u.item"], "README": b"read me"}
    folder = extract_zip(arc, tmp_path / "folder", members=["ml-100k"])
    assert sorted(_tree(folder)) == ["ml-100k/u.data", "ml-100k/u.item"]
    with pytest.raises(LlmesrError, match="has no member 'u.user'"):
        extract_zip(arc, tmp_path / "none", members=["u.user"])
    assert not (tmp_path / "none").exists()


def test_extract_existing_destination(tmp_path):
    arc = _zip(tmp_path / "a.zip", {"x.txt": b"new"})
    (tmp_path / "empty").mkdir()
    assert _tree(extract_zip(arc, tmp_path / "empty")) == {"x.txt": b"new"}
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.txt").write_bytes(b"old")
    with pytest.raises(LlmesrError, match="already exists and is not empty"):
        extract_zip(arc, full)
    assert _tree(full) == {"old.txt": b"old"}
    extract_zip(arc, full, overwrite=True)
    assert _tree(full) == {"x.txt": b"new"}


@pytest.mark.parametrize("bad", ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt",
                                 "..\\evil.txt", "C:/evil.txt"])
def test_zip_slip_rejected(tmp_path, bad):
    work = tmp_path / "w"
    work.mkdir()
    arc = _zip(tmp_path / "slip.zip", {"good.txt": b"fine", bad: b"pwned"})
    with pytest.raises(LlmesrError, match="refusing to extract member") as ei:
        extract_zip(arc, work / "out")
    assert repr(bad) in str(ei.value) and "slip.zip" in str(ei.value)
    assert list(work.iterdir()) == []  # neither out/ nor a temp dir nor evil.txt
    assert not (tmp_path / "evil.txt").exists()
    # choosing only safe members is fine
    assert _tree(extract_zip(arc, work / "out", members=["good.txt"])) == {"good.txt": b"fine"}


def test_corrupt_zip(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(LlmesrError, match=r"junk\.zip is not a readable zip archive"):
        extract_zip(junk, tmp_path / "out")
    good = _zip(tmp_path / "good.zip", {"a.txt": b"a" * 5000})
    truncated = tmp_path / "trunc.zip"
    truncated.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(LlmesrError, match=r"trunc\.zip"):
        extract_zip(truncated, tmp_path / "out")
    # damaged member data (CRC / deflate error) is caught while extracting
    raw = bytearray(_zip(tmp_path / "dmg.zip", {"a.txt": bytes(range(256)) * 40}).read_bytes())
    raw[40:60] = b"\xff" * 20  # inside the compressed data of the only member
    (tmp_path / "dmg.zip").write_bytes(bytes(raw))
    with pytest.raises(LlmesrError, match=r"dmg\.zip: cannot extract a\.txt"):
        extract_zip(tmp_path / "dmg.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dmg.zip", "good.zip", "junk.zip",
                                                          "trunc.zip"]
    with pytest.raises(LlmesrError, match="zip archive not found"):
        extract_zip(tmp_path / "absent.zip", tmp_path / "out")
