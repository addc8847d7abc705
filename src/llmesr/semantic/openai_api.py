"""An encoder for any OpenAI-compatible ``/embeddings`` HTTP API.

The LLM-ESR paper embedded item texts with OpenAI's ``text-embedding-ada-002`` (1536-d). This
encoder talks to that API, or to any server that speaks the same protocol (vLLM, text-embeddings-
inference, LiteLLM, a local proxy...), using only the standard library.

Usage::

    export OPENAI_API_KEY=...          # or the variable named by the ``api_key_env`` option
    llmesr embed DATA --encoder openai:text-embedding-3-small \\
        --encoder-opt base_url=http://localhost:8000/v1

or from Python::

    from llmesr.semantic.encoders import make_encoder
    enc = make_encoder("openai:text-embedding-ada-002")
    vectors = enc.encode(["a first item", "a second item"])   # float32, shape (2, 1536)

Protocol: ``POST {base_url}/embeddings`` with JSON ``{"model": MODEL, "input": [TEXTS...]}``
(plus ``"dimensions"`` when set) and the header ``Authorization: Bearer KEY``. The key is read
from the environment at request time and is never stored on the encoder, nor written to any
message, log line, ``identity``, ``describe()`` or ``repr``.

Notes:

- Empty strings are sent as a single space, because the API rejects empty inputs; every empty
  text therefore gets the vector of ``" "``.
- HTTP 429, 5xx, connection errors and timeouts are retried ``max_retries`` times with
  exponential backoff (``backoff * 2**attempt`` seconds, or the server's ``Retry-After``, at most
  60 s). Any other HTTP error fails at once with the API's own message.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import numpy as np

from llmesr.errors import LlmesrError
from llmesr.semantic.encoders import TextEncoder

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: the longest wait between two attempts, whatever the backoff or Retry-After says
MAX_WAIT_S = 60.0
#: text embedded once to discover the output dimension when ``dim`` is not given
PROBE_TEXT = "dimension probe"
_BODY_TRIM = 300
_RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx


class _Retryable(Exception):
    """A failure worth another attempt; ``wait`` is the server's Retry-After, if any."""

    def __init__(self, what: str, wait: float | None = None):
        super().__init__(what)
        self.what = what
        self.wait = wait


def _trim(text: str, limit: int = _BODY_TRIM) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class OpenAIEncoder(TextEncoder):
    """Embeddings from an OpenAI-compatible HTTP API (see the module docstring).

    Args:
        model: the model name sent to the API.
        base_url: the API root (``.../v1``); default ``$OPENAI_BASE_URL`` or
            ``https://api.openai.com/v1``.
        api_key_env: the environment variable that holds the key (read at request time).
        batch_size: texts per request.
        dim: the output dimension, if known; otherwise ``dimensions`` if set, otherwise it is
            discovered by embedding one short probe text on first access.
        timeout: seconds per request.
        max_retries: retries after the first attempt, for 429 / 5xx / connection errors.
        backoff: base of the exponential backoff, in seconds.
        sleep: the function used to wait between attempts (injectable for tests).
        dimensions: the ``dimensions`` request field (shortened vectors, text-embedding-3-*).
    """

    name = "openai"

    def __init__(self, model: str = "text-embedding-ada-002", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", batch_size: int = 64,
                 dim: int | None = None, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 1.0, sleep: Callable[[float], Any] = time.sleep,
                 dimensions: int | None = None):
        # Options may come from the command line as strings: convert and check them here.
        try:
            self.batch_size = int(batch_size)
            self.timeout = float(timeout)
            self.max_retries = int(max_retries)
            self.backoff = float(backoff)
            dim = None if dim in (None, "", "None") else int(dim)
            dimensions = None if dimensions in (None, "", "None") else int(dimensions)
        except (TypeError, ValueError) as e:
            raise LlmesrError(f"bad option for the openai encoder: {e}") from None
        model = str(model or "").strip()
        if not model:
            raise LlmesrError("the openai encoder needs a model name (--encoder openai:MODEL)")
        if self.batch_size < 1:
            raise LlmesrError("openai encoder batch_size must be >= 1")
        if self.max_retries < 0:
            raise LlmesrError("openai encoder max_retries must be >= 0")
        if self.timeout <= 0 or self.backoff < 0:
            raise LlmesrError("openai encoder timeout must be > 0 and backoff >= 0")
        if dim is not None and dim < 1 or dimensions is not None and dimensions < 1:
            raise LlmesrError("openai encoder dim and dimensions must be >= 1")
        if dim is not None and dimensions is not None and dim != dimensions:
            raise LlmesrError(f"openai encoder options disagree: dim={dim} but "
                              f"dimensions={dimensions}")
        url = str(base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip()
        if not re.match(r"^https?://[^/\s]+", url):
            raise LlmesrError(f"openai encoder base_url must start with http:// or https:// "
                              f"(got '{_trim(url, 100)}')")
        self.model = model
        self.base_url = url.rstrip("/")
        self.api_key_env = str(api_key_env)
        self.dimensions = dimensions
        self.sleep = sleep
        self._dim: int | None = dim if dim is not None else dimensions

    # -- TextEncoder ---------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return f"openai|{self.base_url}|{self.model}|dimensions={self.dimensions}"

    @property
    def label(self) -> str:
        return self.model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._request([PROBE_TEXT]).shape[1])
        return self._dim

    def describe(self) -> dict[str, Any]:
        # _dim, not dim: describing an encoder must never cost an API request.
        return {"name": self.name, "identity": self.identity, "dim": self._dim,
                "model": self.model, "base_url": self.base_url, "api_key_env": self.api_key_env,
                "dimensions": self.dimensions, "batch_size": self.batch_size}

    def __repr__(self) -> str:
        return (f"OpenAIEncoder(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, dimensions={self.dimensions!r}, "
                f"batch_size={self.batch_size})")

    def _encode(self, texts: list[str]) -> np.ndarray:
        # The API rejects empty strings: send a single space instead.
        texts = [t if t else " " for t in texts]
        parts = [self._request(texts[i:i + self.batch_size])
                 for i in range(0, len(texts), self.batch_size)]
        out = np.concatenate(parts, axis=0)
        if self._dim is None:
            self._dim = int(out.shape[1])
        elif out.shape[1] != self._dim:
            raise LlmesrError(f"the embeddings API at {self.url} returned {out.shape[1]}-d vectors "
                              f"for model '{self.model}', but dim={self._dim} was expected")
        return out

    # -- HTTP ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self.base_url}/embeddings"

    def _key(self) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise LlmesrError(f"the openai encoder needs an API key: set the environment "
                              f"variable {self.api_key_env} (or pass --encoder-opt "
                              f"api_key_env=OTHER_VARIABLE)")
        return key

    @staticmethod
    def _redact(text: str, key: str) -> str:
        if key:
            text = text.replace(key, "***")
        # Servers sometimes echo (part of) the key back, e.g. "Incorrect API key: sk-ab***yz".
        return re.sub(r"\bsk-[A-Za-z0-9_\-*.]{4,}", "sk-***", text)

    def _request(self, texts: list[str]) -> np.ndarray:
        """One batch, with retries: a float32 (len(texts), d) matrix."""
        key = self._key()
        payload: dict[str, Any] = {"model": self.model, "input": texts}
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        body = json.dumps(payload).encode("utf-8")
        attempts = self.max_retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                raw = self._post(body, key)
            except _Retryable as r:
                last = self._redact(r.what, key)
                if attempt + 1 >= attempts:
                    break
                wait = r.wait if r.wait is not None else self.backoff * 2 ** attempt
                wait = min(max(wait, 0.0), MAX_WAIT_S)
                log.warning("embeddings request to %s failed (%s); retrying in %.1f s "
                            "(attempt %d of %d)", self.url, last, wait, attempt + 1, attempts)
                self.sleep(wait)
                continue
            return self._parse(raw, len(texts), key)
        raise LlmesrError(f"the embeddings API at {self.url} failed; gave up after {attempts} "
                          f"attempts (last error: {last})")

    def _post(self, body: bytes, key: str) -> bytes:
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Bearer {key}",
        })
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            self._http_error(e, key)
            raise AssertionError("unreachable")  # _http_error always raises
        except urllib.error.URLError as e:
            raise _Retryable(f"connection error: {e.reason}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Retryable(f"connection error: {type(e).__name__}: {e}") from None

    def _http_error(self, e: urllib.error.HTTPError, key: str) -> None:
        status = int(e.code)
        reason = str(e.reason or http.client.responses.get(status, "")).strip()
        try:
            text = e.read().decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the body is only used for the message
            text = ""
        finally:
            e.close()
        message = ""
        try:
            err = json.loads(text).get("error")
            message = str(err.get("message", "") if isinstance(err, dict) else err or "")
        except (ValueError, AttributeError):
            message = text
        detail = f"HTTP {status}" + (f" {reason}" if reason else "")
        if message:
            detail += f": {_trim(message)}"
        detail = self._redact(detail, key)
        if status in _RETRY_STATUSES or 500 <= status < 600:
            raise _Retryable(detail, self._retry_after(e.headers))
        if status == 401:
            raise LlmesrError(f"the API at {self.url} rejected the key in ${self.api_key_env} "
                              f"({detail})")
        hint = ""
        if status == 404:
            hint = f"; check the model name '{self.model}' and base_url {self.base_url}"
        elif status == 403:
            hint = f"; the key in ${self.api_key_env} may lack access to model '{self.model}'"
        raise LlmesrError(f"the embeddings API at {self.url} refused the request for model "
                          f"'{self.model}' ({detail}){hint}")

    @staticmethod
    def _retry_after(headers: Any) -> float | None:
        value = headers.get("Retry-After") if headers is not None else None
        if value is None:
            return None
        try:
            wait = float(str(value).strip())
        except ValueError:
            return None  # an HTTP date: fall back to the exponential backoff
        return wait if math.isfinite(wait) and wait >= 0 else None

    def _parse(self, raw: bytes, n: int, key: str) -> np.ndarray:
        def bad(what: str) -> LlmesrError:
            return LlmesrError(self._redact(
                f"the embeddings API at {self.url} returned a malformed response: {what}", key))

        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            start = raw[:_BODY_TRIM].decode("utf-8", "replace")
            raise bad(f"not JSON (body starts: {_trim(start)!r})") from None
        if not isinstance(doc, dict):
            raise bad(f"expected a JSON object, got {type(doc).__name__}")
        data = doc.get("data")
        if not isinstance(data, list):
            extra = ""
            if isinstance(doc.get("error"), dict):
                extra = f" (error: {_trim(str(doc['error'].get('message', '')))})"
            raise bad(f"no 'data' list (keys: {sorted(doc)[:10]}){extra}")
        if len(data) != n:
            raise bad(f"{len(data)} embeddings for {n} inputs")
        if not all(isinstance(d, dict) for d in data):
            raise bad("'data' items must be objects")
        has_index = ["index" in d for d in data]
        if all(has_index):
            indices = [d["index"] for d in data]
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices) \
                    or sorted(indices) != list(range(n)):
                raise bad(f"the 'index' fields are not 0..{n - 1} (got {_trim(str(indices), 120)})")
            data = sorted(data, key=lambda d: d["index"])
        elif any(has_index):
            raise bad("some 'data' items have an 'index' and some do not")
        rows = []
        for i, d in enumerate(data):
            vec = d.get("embedding")
            if isinstance(vec, str):
                raise bad(f"embedding {i} is a string (base64 encoding is not supported)")
            if not isinstance(vec, list) or not vec:
                raise bad(f"embedding {i} is missing or not a non-empty list")
            if not all(_is_number(v) for v in vec):
                raise bad(f"embedding {i} has non-numeric values")
            if rows and len(vec) != len(rows[0]):
                raise bad(f"embeddings have different lengths ({len(rows[0])} and {len(vec)})")
            rows.append(vec)
        return np.asarray(rows, dtype=np.float32)
