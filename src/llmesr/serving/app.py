"""The HTTP API (FastAPI): ``llmesr serve RUN_DIR``.

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``POST /recommend``  ``{"history": [ids], "k": 10, "exclude_seen": true}`` -> top-k, or
  ``{"histories": [[ids], ...], ...}`` -> ``{"results": [...]}``
- ``POST /items``      ``{"items": [{"id": ..., "title": ...}], "collaborative": "pca"}`` ->
  201; adds items by text (cold start), saved with the run
- ``GET /items/{id}``  what the run knows of an item (404 when unknown)
- ``GET /health``      status, model and catalogue size

Every input is validated: a bad request gets a 4xx with a message naming the problem (422 for
malformed or out-of-range fields, text that is not valid Unicode included, 413 for a body over
the size limit, 404 for an unknown item, 409 for an id that already exists), never a 500; 503
when the added items cannot be saved (disk full, read-only run directory). Concurrent
recommendation requests are batched: one worker thread runs whatever requests are waiting in
one forward pass.
"""

# No ``from __future__ import annotations``: FastAPI reads the request models defined inside
# create_app (their limits are settings) from their real annotations.

import asyncio
import concurrent.futures
import ipaddress
import json
import queue
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt,
                      StrictStr, WithJsonSchema, model_validator)

from llmesr import __version__
from llmesr.errors import LlmesrError
from llmesr.serving.recommender import (COLLABORATIVE, ColdStartUnavailable, ItemExistsError,
                                        ItemsNotSaved, Recommender, is_unicode)


class SafeJSONResponse(JSONResponse):
    """UTF-8 JSON; a string that UTF-8 cannot hold (a lone surrogate) is written escaped
    (``"\\ud800"``), so that no response fails to serialise."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")


@dataclass
class Limits:
    """What one request may ask for."""

    #: items in one history (the model reads the last max_len of them; the rest still count
    #: for exclude_seen)
    max_history: int = 1000
    #: the largest k
    max_k: int = 1000
    #: histories in one batch request
    max_batch: int = 256
    #: items in one POST /items
    max_new_items: int = 1000
    #: request body size in bytes
    max_body_bytes: int = 1_000_000


class _Job:
    __slots__ = ("histories", "k", "exclude_seen", "slots", "future")

    def __init__(self, histories, k, exclude_seen, slots):
        self.histories, self.k, self.exclude_seen, self.slots = histories, k, exclude_seen, slots
        self.future: concurrent.futures.Future = concurrent.futures.Future()


class Batcher:
    """Runs recommendation jobs on one worker thread, each time taking every job that is
    waiting (up to ``max_rows`` histories) as one batch: under concurrent load a forward pass
    serves many requests; alone, a request waits for nobody."""

    def __init__(self, rec: Recommender, max_rows: int = 256):
        self.rec, self.max_rows = rec, max_rows
        self.queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="llmesr-batcher", daemon=True)
        self.thread.start()

    def submit(self, histories: list, k: int, exclude_seen: bool, new_item_slots: int = 0
               ) -> concurrent.futures.Future:
        job = _Job(histories, k, exclude_seen, new_item_slots)
        self.queue.put(job)
        return job.future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            jobs, rows = [job], len(job.histories)
            while rows < self.max_rows:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)    # finish this batch, then stop
                    break
                jobs.append(nxt)
                rows += len(nxt.histories)
            self._serve(jobs)

    def _serve(self, jobs: list) -> None:
        hist, ks, ex, slots = [], [], [], []
        for j in jobs:
            hist += j.histories
            ks += [j.k] * len(j.histories)
            ex += [j.exclude_seen] * len(j.histories)
            slots += [j.slots] * len(j.histories)
        try:
            results = self.rec.recommend_batch(hist, ks, ex, slots)
        except Exception as e:  # noqa: BLE001 - handed to the request(s)
            if len(jobs) == 1:
                jobs[0].future.set_exception(e)
            else:                   # find the job that failed; the others still get answers
                for j in jobs:
                    self._serve([j])
            return
        at = 0
        for j in jobs:
            j.future.set_result(results[at:at + len(j.histories)])
            at += len(j.histories)


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, whether announced by
    Content-Length or streamed (chunked).

    The rest of an oversized body is read and dropped before answering (up to
    ``DRAIN_FACTOR`` times the limit), so that a client still sending gets the 413 instead of
    a broken connection; a body larger still is cut off.
    """

    DRAIN_FACTOR = 64

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def _drain(self, receive, seen: int) -> None:
        budget = self.limit * self.DRAIN_FACTOR
        more = True
        while more and seen <= budget:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                return await _send_json(send, 400, "Content-Length is not a number")
            if too_big:
                await self._drain(receive, 0)
                return await _send_json(send, 413, f"request body over {self.limit} bytes")
        seen = 0
        limit = self.limit

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if message.get("more_body", False):
                        await self._drain(receive, seen)
                    # FastAPI passes an HTTPException from reading the body straight through
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        return await self.app(scope, limited, send)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _item_id(v: Any) -> str:
    if isinstance(v, str):
        if not is_unicode(v):
            raise ValueError(f"the item id {v!r} is not valid Unicode text (a lone surrogate)")
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise ValueError(f"an item id is a string or an integer, not {type(v).__name__}")


#: FastAPI's words for a body it could not decode at all (anything but a JSON syntax error)
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


async def _body_error(req: Request, fallback: str) -> str:
    """Why FastAPI could not parse the body, in words a client can act on."""
    body = await req.body()              # already read and cached by FastAPI
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return (f"the body is not valid UTF-8 (byte {e.start}: {body[e.start:e.start + 1]!r}): "
                "send JSON encoded as UTF-8")
    return fallback


def _message(e: dict[str, Any]) -> str:
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    if e.get("type") == "json_invalid":
        err = (e.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({err}) at character {loc[0] if loc else '?'}"
    if not loc and e.get("type") == "missing":
        return "the request body is empty: send a JSON object"
    msg = str(e.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{'.'.join(loc) or 'body'}: {msg}"


def create_app(rec: Recommender, limits: Optional[Limits] = None) -> FastAPI:
    """The FastAPI application for ``rec`` (run it with uvicorn, or :func:`serve`)."""
    lim = limits or Limits()
    ItemId = Annotated[str, BeforeValidator(_item_id),
                       WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}],
                                       "description": "a raw item id, as in the source data"})]
    History = Annotated[list[ItemId], Field(max_length=lim.max_history,
                                            description="item ids, oldest first")]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={
            "examples": [{"history": ["171", "1345"], "k": 10, "exclude_seen": True}]})

        history: Optional[History] = Field(
            None, description="one history (give this or 'histories')")
        histories: Optional[Annotated[list[History], Field(max_length=lim.max_batch)]] = Field(
            None, description="several histories, answered in one batch")
        k: StrictInt = Field(10, ge=1, le=lim.max_k, description="how many items")
        exclude_seen: StrictBool = Field(True, description="leave out items in the history")
        new_item_slots: StrictInt = Field(
            0, ge=0, le=lim.max_k, description="keep this many of the k places for items "
            "added after training (cold start), when there are that many")

        @model_validator(mode="after")
        def one_form(self):
            if (self.history is None) == (self.histories is None):
                raise ValueError("give exactly one of 'history' and 'histories'")
            if self.new_item_slots > self.k:
                raise ValueError("new_item_slots cannot be more than k")
            return self

    class Scored(BaseModel):
        id: str
        score: float
        title: Optional[str]

    class Result(BaseModel):
        items: list[Scored]
        unknown: list[str] = Field(description="ids of the history the run does not know "
                                               "(left out)")
        used: int = Field(description="known history items the model read")
        fallback: Optional[Literal["popularity"]] = Field(
            description="'popularity' when no history item was known")

    class BatchResult(BaseModel):
        results: list[Result]

    class NewItem(BaseModel):
        model_config = ConfigDict(extra="allow", json_schema_extra={
            "examples": [{"id": "NEW-1", "title": "argan oil shampoo"}]})

        id: ItemId
        text: Optional[StrictStr] = Field(None, description="exact text to embed (else the "
                                          "prompt is built from the item's fields)")
        embedding: Optional[list[float]] = Field(None, description="a vector from the run's "
                                                 "encoder, instead of text")

    class AddRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        items: Annotated[list[NewItem], Field(min_length=1, max_length=lim.max_new_items)]
        collaborative: Literal[COLLABORATIVE] = Field(  # type: ignore[valid-type]
            "pca", description="how new items get a collaborative embedding")

    class AddResult(BaseModel):
        added: list[str]
        items: int

    batcher: dict[str, Batcher] = {}

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        batcher["b"] = Batcher(rec, max_rows=lim.max_batch)
        try:
            yield
        finally:
            batcher.pop("b").close()

    app = FastAPI(title="llmesr", version=__version__, lifespan=lifespan,
                  default_response_class=SafeJSONResponse,
                  description="Sequential recommendation with LLM-enhanced item embeddings "
                              f"(LLM-ESR). Run: {rec.run_dir}")

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, exc: RequestValidationError):
        errors = [_message(e) for e in exc.errors()]
        return SafeJSONResponse(status_code=422, content={"detail": "; ".join(errors[:10]),
                                                          "errors": len(errors)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(req: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if exc.status_code == 400 and detail == _FASTAPI_BODY_ERROR:
            detail = await _body_error(req, detail)
        return SafeJSONResponse(status_code=exc.status_code, content={"detail": detail},
                                headers=getattr(exc, "headers", None))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, **rec.describe()}

    @app.post("/recommend", response_model=Union[Result, BatchResult],
              responses={422: {"description": "invalid request"},
                         413: {"description": "body too large"}})
    async def recommend(req: RecommendRequest):
        single = req.history is not None
        histories = [req.history] if single else req.histories
        if not histories:
            return {"results": []}
        b = batcher.get("b")
        if b is None:
            raise HTTPException(503, "the server is starting or stopping")
        future = b.submit(histories, req.k, req.exclude_seen, req.new_item_slots)
        try:
            results = await asyncio.wrap_future(future)
        except LlmesrError as e:
            raise HTTPException(422, str(e)) from None
        out = [r.to_dict() for r in results]
        return out[0] if single else {"results": out}

    @app.post("/items", status_code=201, response_model=AddResult,
              responses={409: {"description": "an id already exists, or the model cannot add "
                                              "items"}, 422: {"description": "invalid items"},
                         503: {"description": "the items could not be saved with the run"}})
    def add_items(req: AddRequest):
        items = [{k: v for k, v in it.model_dump().items()
                  if not (k in ("text", "embedding") and v is None)} for it in req.items]
        try:
            added = rec.add_items(items, req.collaborative)
        except (ItemExistsError, ColdStartUnavailable) as e:
            raise HTTPException(409, str(e)) from None
        except ItemsNotSaved as e:
            raise HTTPException(503, str(e)) from None
        except LlmesrError as e:
            raise HTTPException(422, str(e)) from None
        return {"added": added, "items": rec.num_items}

    @app.get("/items/{item_id}", responses={404: {"description": "unknown item"}})
    def get_item(item_id: Annotated[str, Path(max_length=1000)]) -> dict[str, Any]:
        try:
            return rec.item(item_id)
        except KeyError:
            raise HTTPException(404, f"unknown item {item_id!r}") from None
        except LlmesrError as e:          # not valid Unicode
            raise HTTPException(422, str(e)) from None

    app.add_middleware(BodyLimit, limit=lim.max_body_bytes)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, *,
          limits: Optional[Limits] = None, device: str = "cpu", threads: Optional[int] = 1,
          log_level: str = "info", log=print) -> None:
    """Load ``run_dir`` and serve it until interrupted.

    ``threads``: torch's intra-op threads (None: torch's default, all cores). One is the
    default: requests are small, concurrency comes from batching, and the HTTP layer and the
    clients need the other cores (2 cores, beauty: p50 4.2 ms and 541 requests/s under 8
    clients with one thread, against 5.4 ms and 400 requests/s with two; README "Serving").
    """
    import torch
    import uvicorn

    sock = listen_socket(host, port)     # first: a port in use is one line, before any loading
    try:
        if threads:
            torch.set_num_threads(threads)
        rec = Recommender.load(run_dir, device=device)
        if not is_loopback(host):
            log(f"warning: serving on {host}, reachable from other machines; the API has no "
                "authentication (POST /items changes the run)")
        d = rec.describe()
        shown = f"[{host}]" if ":" in host else host
        log(f"serving {d['model']}/{d['backbone']} on {d['dataset']} ({d['items']:,} items) at "
            f"http://{shown}:{port} (docs at /docs)")
        server = uvicorn.Server(uvicorn.Config(create_app(rec, limits), host=host, port=port,
                                               log_level=log_level))
        server.run(sockets=[sock])
    finally:
        sock.close()


def listen_socket(host: str, port: int):
    """A socket bound to ``host:port`` (as uvicorn binds it), or one clear error: the port is
    in use, needs privileges, or the host is not an address of this machine."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        where = f"{host}:{port}"
        if isinstance(e, socket.gaierror):
            why = f"unknown host {host!r} ({e.strerror})"
        elif e.errno == errno.EADDRINUSE:
            why = f"port {port} is already in use (another server?); choose another --port"
        elif e.errno == errno.EACCES:
            why = (f"no permission to use port {port} (ports below 1024 need privileges); "
                   "choose another --port")
        elif e.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine; use --host 127.0.0.1 or 0.0.0.0"
        else:
            why = e.strerror or str(e)
        raise LlmesrError(f"cannot listen on {where}: {why}") from None
    return sock
