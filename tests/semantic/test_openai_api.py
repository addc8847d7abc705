"""OpenAIEncoder against a fake OpenAI-compatible server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from llmesr.errors import LlmesrError
from llmesr.semantic.encoders import make_encoder
from llmesr.semantic.openai_api import PROBE_TEXT, OpenAIEncoder

KEY = "sk-test-0123456789abcdefSECRET"
DIM = 8


def fake_vec(text: str, dim: int = DIM) -> list[float]:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round(b / 255.0 - 0.5, 6) for b in digest[:dim]]


class FakeAPI:
    """State of the fake server: a queue of scripted answers, then normal answers.

    Script entries: ``("status", code, headers, body)``, ``("raw", bytes)``, ``("json", obj)``,
    ``("mangle", name)`` (a normal answer, altered) or ``("delay", seconds)`` (a normal answer,
    late).
    """

    def __init__(self):
        self.key = KEY
        self.dim = DIM
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.url = ""

    def then(self, *entries: tuple, times: int = 1) -> FakeAPI:
        self.script.extend(list(entries) * times)
        return self

    def inputs(self) -> list[list[str]]:
        return [r["body"]["input"] for r in self.requests]


def make_handler(api: FakeAPI):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def send(self, code: int, body: bytes, headers: dict | None = None):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(n)
            auth = self.headers.get("Authorization", "")
            with api.lock:
                body = json.loads(raw)
                api.requests.append({"path": self.path, "auth": auth, "body": body})
                step = api.script.pop(0) if api.script else None
            if self.path != "/v1/embeddings":
                return self.send(404, json.dumps({"error": {"message": "no such route"}}).encode())
            if auth != f"Bearer {api.key}":
                given = auth.removeprefix("Bearer ")
                # Like some servers, echo the key back: the client must redact it.
                err = {"error": {"message": f"Incorrect API key provided: {given}",
                                 "type": "invalid_request_error"}}
                return self.send(401, json.dumps(err).encode())
            if step and step[0] == "status":
                _, code, headers, payload = step
                return self.send(code, payload, headers)
            if step and step[0] == "raw":
                return self.send(200, step[1])
            if step and step[0] == "json":
                return self.send(200, json.dumps(step[1]).encode())
            if step and step[0] == "delay":
                time.sleep(step[1])
            dim = body.get("dimensions", api.dim)
            data = [{"object": "embedding", "index": i, "embedding": fake_vec(t, dim)}
                    for i, t in enumerate(body["input"])]
            if step and step[0] == "mangle":
                data = mangle(step[1], data)
            resp = {"object": "list", "data": data, "model": body["model"],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1}}
            self.send(200, json.dumps(resp).encode())

    return Handler


def mangle(how: str, data: list[dict]) -> list[dict]:
    if how == "shuffle":
        return list(reversed(data[1::2])) + data[0::2]
    if how == "drop_one":
        return data[:-1]
    if how == "non_numeric":
        data[0]["embedding"][0] = "x"
        return data
    if how == "ragged":
        data[-1]["embedding"] = data[-1]["embedding"][:-1]
        return data
    if how == "bad_index":
        data[0]["index"] = 99
        return data
    if how == "no_embedding":
        del data[0]["embedding"]
        return data
    raise AssertionError(how)


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    """No proxy (the client must only ever reach 127.0.0.1), no stray base URL, a valid key."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def api(request):
    state = FakeAPI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)

    request.addfinalizer(stop)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return state


@pytest.fixture
def sleeps():
    return []


def encoder(api: FakeAPI, sleeps: list, **kw) -> OpenAIEncoder:
    kw.setdefault("model", "fake-embed")
    kw.setdefault("backoff", 0.5)
    kw.setdefault("timeout", 5.0)
    return OpenAIEncoder(base_url=api.url, sleep=sleeps.append, **kw)


def no_key(text: str) -> None:
    assert KEY not in text
    assert "SECRET" not in text


# -- success ----------------------------------------------------------------------------------

def test_several_batches_in_order(api, sleeps):
    texts = [f"item {i}" for i in range(7)] + [""]
    enc = encoder(api, sleeps, batch_size=3, dim=DIM)
    out = enc.encode(texts)
    assert out.dtype == np.float32 and out.shape == (8, DIM)
    assert len(api.requests) == 3
    assert api.inputs() == [texts[0:3], texts[3:6], ["item 6", " "]]  # empty sent as a space
    expected = np.array([fake_vec(t or " ") for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    for r in api.requests:
        assert r["auth"] == f"Bearer {KEY}"
        assert r["body"]["model"] == "fake-embed"
        assert "dimensions" not in r["body"]
    assert sleeps == []


def test_shuffled_index_is_reordered(api, sleeps):
    texts = [f"t{i}" for i in range(5)]
    api.then(("mangle", "shuffle"))
    out = encoder(api, sleeps, dim=DIM).encode(texts)
    np.testing.assert_array_equal(out, np.array([fake_vec(t) for t in texts], np.float32))


def test_dimensions_sent_and_used_as_dim(api, sleeps):
    enc = encoder(api, sleeps, dimensions=4)
    assert enc.dim == 4
    assert api.requests == []  # known from `dimensions`: no probe
    out = enc.encode(["a", "b"])
    assert out.shape == (2, 4)
    assert api.requests[0]["body"]["dimensions"] == 4


def test_dim_discovered_once_with_a_probe(api, sleeps):
    enc = encoder(api, sleeps)
    assert enc.dim == DIM
    assert enc.dim == DIM
    assert api.inputs() == [[PROBE_TEXT]]
    enc.encode(["x"])
    assert len(api.requests) == 2


def test_given_dim_mismatch_is_an_error(api, sleeps):
    enc = encoder(api, sleeps, dim=16)
    assert enc.dim == 16 and api.requests == []
    with pytest.raises(LlmesrError, match="8-d vectors.*dim=16"):
        enc.encode(["x"])


def test_string_options_and_make_encoder(api, sleeps):
    enc = make_encoder("openai:fake-embed", base_url=api.url + "/", batch_size="2", dim="8",
                       sleep=sleeps.append)
    assert isinstance(enc, OpenAIEncoder)
    assert enc.model == "fake-embed" and enc.label == "fake-embed"
    assert enc.base_url == api.url and enc.batch_size == 2 and enc.dim == 8
    assert enc.encode(["a", "b", "c"]).shape == (3, 8)
    assert len(api.requests) == 2


def test_base_url_default_and_env(monkeypatch):
    assert OpenAIEncoder().base_url == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1/")
    enc = OpenAIEncoder("m")
    assert enc.base_url == "http://127.0.0.1:1/v1"
    assert enc.identity == "openai|http://127.0.0.1:1/v1|m|dimensions=None"
    with pytest.raises(LlmesrError, match="base_url"):
        OpenAIEncoder("m", base_url="localhost:8000/v1")
    with pytest.raises(LlmesrError, match="disagree"):
        OpenAIEncoder("m", dim=8, dimensions=4)


# -- retries ----------------------------------------------------------------------------------

def test_retry_429_with_retry_after(api, sleeps):
    api.then(("status", 429, {"Retry-After": "2"}, b'{"error": {"message": "slow down"}}'),
             times=2)
    out = encoder(api, sleeps, dim=DIM).encode(["a"])
    np.testing.assert_array_equal(out[0], np.array(fake_vec("a"), np.float32))
    assert sleeps == [2.0, 2.0]
    assert len(api.requests) == 3


def test_retry_429_without_retry_after_backs_off(api, sleeps):
    api.then(("status", 429, {}, b""), times=3)
    encoder(api, sleeps, dim=DIM).encode(["a"])
    assert sleeps == [0.5, 1.0, 2.0]


def test_retry_after_capped_at_60s(api, sleeps):
    api.then(("status", 429, {"Retry-After": "3600"}, b""))
    encoder(api, sleeps, dim=DIM).encode(["a"])
    assert sleeps == [60.0]


def test_retry_503_then_success(api, sleeps, caplog):
    # The error body echoes the key: neither the log nor anything else may show it.
    api.then(("status", 503, {}, json.dumps({"error": {"message": f"busy {KEY}"}}).encode()),
             times=2)
    with caplog.at_level(logging.WARNING, logger="llmesr.semantic.openai_api"):
        out = encoder(api, sleeps, dim=DIM, backoff=0.25).encode(["a", "b"])
    assert out.shape == (2, DIM)
    assert sleeps == [0.25, 0.5]
    assert "503" in caplog.text
    no_key(caplog.text)


def test_gives_up_after_max_retries(api, sleeps):
    api.then(("status", 503, {}, b"upstream overloaded"), times=10)
    with pytest.raises(LlmesrError) as e:
        encoder(api, sleeps, dim=DIM, max_retries=2).encode(["a"])
    msg = str(e.value)
    assert "gave up after 3 attempts" in msg and "503" in msg and "upstream overloaded" in msg
    assert len(api.requests) == 3
    assert sleeps == [0.5, 1.0]


def test_connection_refused_is_retried_then_gives_up(sleeps):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    enc = OpenAIEncoder("m", base_url=f"http://127.0.0.1:{port}/v1", dim=4, max_retries=1,
                        backoff=0.5, sleep=sleeps.append, timeout=2)
    with pytest.raises(LlmesrError, match="gave up after 2 attempts.*connection error"):
        enc.encode(["a"])
    assert sleeps == [0.5]


def test_timeout_is_retried(api, sleeps):
    api.then(("delay", 0.6))
    out = encoder(api, sleeps, dim=DIM, timeout=0.2).encode(["a"])
    assert out.shape == (1, DIM)
    assert sleeps == [0.5]


# -- errors that are not retried ------------------------------------------------------------

def test_bad_key_is_a_clear_error_without_the_key(api, sleeps, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "-wrong")
    with pytest.raises(LlmesrError) as e:
        encoder(api, sleeps, dim=DIM).encode(["a"])
    msg = str(e.value)
    assert "401" in msg and "Incorrect API key provided" in msg and "$OPENAI_API_KEY" in msg
    no_key(msg)
    chained = e.value.__cause__ or e.value.__context__
    no_key(repr(chained))
    assert sleeps == [] and len(api.requests) == 1


def test_custom_key_variable(api, sleeps, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("MY_EMBED_KEY", KEY)
    assert encoder(api, sleeps, dim=DIM, api_key_env="MY_EMBED_KEY").encode(["a"]).shape == (1, 8)


def test_missing_key_names_the_variable(api, sleeps, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(LlmesrError, match="OPENAI_API_KEY"):
        encoder(api, sleeps, dim=DIM).encode(["a"])
    with pytest.raises(LlmesrError, match="MY_EMBED_KEY"):
        encoder(api, sleeps, dim=DIM, api_key_env="MY_EMBED_KEY").encode(["a"])
    assert api.requests == []


@pytest.mark.parametrize("code", [400, 404, 422])
def test_client_errors_fail_at_once(api, sleeps, code):
    body = json.dumps({"error": {"message": "model 'nope' does not exist",
                                 "type": "invalid_request_error"}}).encode()
    api.then(("status", code, {}, body))
    with pytest.raises(LlmesrError) as e:
        encoder(api, sleeps, dim=DIM).encode(["a"])
    msg = str(e.value)
    assert f"HTTP {code}" in msg and "model 'nope' does not exist" in msg
    assert sleeps == [] and len(api.requests) == 1


@pytest.mark.parametrize("step, what", [
    (("raw", b"<html>gateway</html>"), "not JSON"),
    (("json", {"object": "list", "model": "m"}), "'data'"),
    (("json", ["not", "an", "object"]), "JSON object"),
    (("mangle", "drop_one"), "2 embeddings for 3 inputs"),
    (("mangle", "non_numeric"), "non-numeric"),
    (("mangle", "ragged"), "different lengths"),
    (("mangle", "bad_index"), "index"),
    (("mangle", "no_embedding"), "embedding 0"),
])
def test_malformed_responses(api, sleeps, step, what):
    api.then(step)
    with pytest.raises(LlmesrError) as e:
        encoder(api, sleeps, dim=DIM).encode(["a", "b", "c"])
    msg = str(e.value)
    assert "malformed" in msg and what in msg
    no_key(msg)
    assert sleeps == []


def test_long_bodies_are_trimmed(api, sleeps):
    api.then(("raw", b"x" * 100_000))
    with pytest.raises(LlmesrError, match="malformed") as e:
        encoder(api, sleeps, dim=DIM).encode(["a"])
    assert len(str(e.value)) < 1000


# -- no secrets -------------------------------------------------------------------------------

def test_identity_describe_repr_have_no_key(api, sleeps):
    enc = encoder(api, sleeps, dimensions=8)
    assert enc.identity == f"openai|{api.url}|fake-embed|dimensions=8"
    d = enc.describe()
    assert d["dim"] == 8 and d["model"] == "fake-embed" and d["api_key_env"] == "OPENAI_API_KEY"
    for text in (enc.identity, json.dumps(d), repr(enc), str(enc), enc.slug,
                 repr(vars(enc))):
        no_key(text)
