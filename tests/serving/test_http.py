"""The HTTP API, through a real HTTP client against a running `llmesr serve` process."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from llmesr.serving import Recommender
from llmesr.serving.app import is_loopback
from tests.serving.conftest import raw_history

pytestmark = pytest.mark.shared_data

MAX_HISTORY, MAX_K, MAX_BODY = 50, 100, 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int, log=None):
        self.port = port
        self.log = log          # the server's output (a file)

    def call(self, method: str, path: str, body=None, raw: bytes | None = None,
             headers: dict | None = None, chunked: bool = False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"content-type": "application/json", **(headers or {})}
        if chunked:
            conn.putrequest(method, path)
            for k, v in {**h, "transfer-encoding": "chunked"}.items():
                conn.putheader(k, v)
            conn.endheaders()
            for i in range(0, len(data), 4096):
                piece = data[i:i + 4096]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, text


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    import shutil

    run = shutil.copytree(trained_run, tmp_path_factory.mktemp("http") / "run")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = run.parent / "server.log"
    out = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmesr.cli", "serve", str(run), "--port", str(port),
         "--max-history", str(MAX_HISTORY), "--max-k", str(MAX_K), "--max-batch", "8",
         "--max-body-bytes", str(MAX_BODY), "--log-level", "warning"],
        stdout=out, stderr=subprocess.STDOUT, env=env)
    client = Client(port, log)
    deadline = time.time() + 120
    while True:
        try:
            if client.call("GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    yield client, run
    proc.terminate()
    proc.wait(timeout=30)
    out.close()


def test_health_docs_and_schema(server, ds):
    client, _ = server
    status, body = client.call("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["items"] == ds.num_items
    assert client.call("GET", "/docs")[0] == 200
    status, schema = client.call("GET", "/openapi.json")
    assert status == 200
    assert {"/recommend", "/items", "/items/{item_id}", "/health"} <= set(schema["paths"])


def test_recommend_matches_the_python_api(server, ds, trained_run):
    client, _ = server
    history = raw_history(ds, 3, 6)
    status, body = client.call("POST", "/recommend", {"history": history, "k": 7})
    assert status == 200
    ref = Recommender.load(trained_run).recommend(history, k=7)
    assert [i["id"] for i in body["items"]] == ref.ids
    assert [i["score"] for i in body["items"]] == pytest.approx(ref.scores, abs=1e-5)
    assert [i["title"] for i in body["items"]] == ref.titles
    assert body["unknown"] == [] and body["used"] == 6 and body["fallback"] is None


def test_batch_form(server, ds):
    client, _ = server
    hs = [raw_history(ds, u, 4) for u in (1, 2, 3)]
    status, body = client.call("POST", "/recommend", {"histories": hs, "k": 3,
                                                      "exclude_seen": False})
    assert status == 200 and len(body["results"]) == 3
    for h, r in zip(hs, body["results"]):
        single = client.call("POST", "/recommend", {"history": h, "k": 3,
                                                    "exclude_seen": False})[1]
        assert [i["id"] for i in r["items"]] == [i["id"] for i in single["items"]]


def test_unknown_items_and_emptyraw_history(server, ds):
    client, _ = server
    history = raw_history(ds, 5, 3)
    status, body = client.call("POST", "/recommend", {"history": ["nope", *history, 99999999]})
    assert status == 200 and body["unknown"] == ["nope", "99999999"] and body["used"] == 3
    for h in ([], ["nope"]):
        status, body = client.call("POST", "/recommend", {"history": h, "k": 4})
        assert status == 200 and body["fallback"] == "popularity" and len(body["items"]) == 4
    assert client.call("GET", "/items/nope")[0] == 404


@pytest.mark.parametrize("payload, message", [
    (b"{bad json", "not valid JSON"),
    (b"", "body is empty"),
    (b"[1, 2]", "valid dictionary"),
    ({"history": "123"}, "valid list"),
    ({"history": [1.5]}, "string or an integer"),
    ({"history": [None]}, "string or an integer"),
    ({"history": [{"id": 1}]}, "string or an integer"),
    ({"history": ["1"], "k": "10"}, "valid integer"),
    ({"history": ["1"], "k": 2.5}, "valid integer"),
    ({"history": ["1"], "k": 0}, "greater than or equal to 1"),
    ({"history": ["1"], "k": 10 ** 12}, f"less than or equal to {MAX_K}"),
    ({"history": ["1"], "exclude_seen": "yes"}, "valid boolean"),
    ({"history": ["1"], "extra": 1}, "Extra inputs"),
    ({"history": ["1"], "k": 3, "new_item_slots": 4}, "cannot be more than k"),
    ({"history": ["1"], "new_item_slots": -1}, "greater than or equal to 0"),
    ({}, "exactly one of"),
    ({"history": ["1"], "histories": [["1"]]}, "exactly one of"),
    ({"history": ["1"] * (MAX_HISTORY + 1)}, f"at most {MAX_HISTORY}"),
    ({"histories": [["1"]] * 9}, "at most 8"),
])
def test_bad_requests_get_a_422_with_a_message(server, payload, message):
    client, _ = server
    raw = payload if isinstance(payload, bytes) else None
    status, body = client.call("POST", "/recommend", None if raw is not None else payload,
                               raw=raw)
    assert status == 422, body
    assert message in body["detail"], body


def test_oversized_bodies_get_a_413(server):
    client, _ = server
    big = json.dumps({"history": ["x" * 100] * 400}).encode()
    assert len(big) > MAX_BODY
    status, body = client.call("POST", "/recommend", raw=big)
    assert status == 413 and "over" in body["detail"]
    status, body = client.call("POST", "/recommend", raw=big, chunked=True)
    assert status == 413
    assert client.call("GET", "/health")[0] == 200         # the server is still fine


def test_cold_start_over_http(server, ds):
    client, run = server
    new = [{"id": "HTTP-1", "title": "coconut lip balm"}, {"id": 424242, "text": "a hair dryer"}]
    status, body = client.call("POST", "/items", {"items": new})
    assert status == 201 and body["added"] == ["HTTP-1", "424242"]
    assert body["items"] == ds.num_items + 2
    status, item = client.call("GET", "/items/HTTP-1")
    assert status == 200 and item["added"] and item["title"] == "coconut lip balm"
    status, rec = client.call("POST", "/recommend", {"history": ["HTTP-1"], "k": 3})
    assert status == 200 and rec["unknown"] == [] and rec["fallback"] is None
    status, rec = client.call("POST", "/recommend", {"history": raw_history(ds, 2, 3), "k": 5,
                                                     "new_item_slots": 2})
    assert status == 200 and {i["id"] for i in rec["items"]} >= {"HTTP-1", "424242"}
    assert client.call("POST", "/items", {"items": [{"id": "HTTP-1", "title": "x"}]})[0] == 409
    for bad, code in (({"items": []}, 422), ({"items": [{"title": "no id"}]}, 422),
                      ({"items": [{"id": "Z", "colour": "red"}]}, 422),
                      ({"items": [{"id": "Z", "embedding": [1.0, 2.0]}]}, 422),
                      ({"items": [{"id": "Z", "title": "x"}], "collaborative": "x"}, 422),
                      ({"items": "HTTP-2"}, 422)):
        status, body = client.call("POST", "/items", bad)
        assert status == code, (bad, body)
        assert isinstance(body["detail"], str) and body["detail"]
    assert (run / "added_items" / "manifest.json").is_file()
    assert Recommender.load(run).num_added == 2            # saved with the run


def test_text_that_is_not_unicode_gets_a_422_and_no_traceback(server):
    """A lone surrogate ("\\ud800" in JSON) in an id or a title: a 422 naming it, not a 500
    (the answer could not be written as UTF-8) with a traceback in the server log."""
    client, run = server
    for path, body in [
            ("/recommend", b'{"history": ["1", "\\ud800"]}'),
            ("/recommend", b'{"histories": [["1"], ["\\udfff"]]}'),
            ("/items", b'{"items": [{"id": "\\ud800", "title": "x"}]}'),
            ("/items", b'{"items": [{"id": "S1", "title": "bad \\ud800 title"}]}'),
            ("/items", b'{"items": [{"id": "S2", "text": "bad \\udbff text"}]}'),
            ("/items", b'{"items": [{"id": "S3", "\\ud800": "a field name"}]}')]:
        status, reply = client.call("POST", path, raw=body)
        assert status == 422, (body, reply)
        assert "unicode" in reply["detail"].lower(), reply
    status, reply = client.call("GET", "/items/%ED%A0%80")     # not UTF-8 in the path
    assert 400 <= status < 500, reply
    assert client.call("GET", "/health")[1]["added_items"] == Recommender.load(run).num_added
    assert "Traceback" not in client.log.read_text()


def test_a_body_that_is_not_utf8_gets_a_400_that_says_so(server):
    """Latin-1 bytes in a JSON body: FastAPI's generic 400 becomes one naming the byte."""
    client, _ = server
    for path, body in [("/recommend", b'{"history": ["caf\xe9"]}'),
                       ("/items", b'{"items": [{"id": "S9", "title": "cr\xe8me"}]}')]:
        status, reply = client.call("POST", path, raw=body)
        assert status == 400, (body, reply)
        assert reply["detail"].startswith("the body is not valid UTF-8 (byte "), reply
    status, reply = client.call("POST", "/recommend", raw=b'{"history": [')
    assert status == 422 and "not valid JSON" in reply["detail"], reply
    assert "Traceback" not in client.log.read_text()


def test_concurrent_clients_get_their_own_answers(server, ds):
    """Requests that arrive together are batched; each still gets its own result."""
    client, _ = server
    histories = [raw_history(ds, u, 1 + u % 9) for u in range(1, 41)]
    expected = [client.call("POST", "/recommend", {"history": h, "k": 5})[1] for h in histories]
    got: dict[int, dict] = {}

    def worker(w: int) -> None:
        for i in range(w, len(histories), 8):
            got[i] = client.call("POST", "/recommend", {"history": histories[i], "k": 5})[1]

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, e in enumerate(expected):
        assert [x["id"] for x in got[i]["items"]] == [x["id"] for x in e["items"]]


def test_loopback_default():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
