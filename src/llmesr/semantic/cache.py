"""A content-addressed, crash-safe embedding cache.

Vectors are keyed by ``sha256(text)`` inside a folder named by ``sha256(encoder identity)``,
so a changed encoder never reuses another's vectors and a text is embedded once for all
datasets that share the cache.

The cache is a set of immutable shard files (``shard-*.npz`` with the keys and the float32
vectors). Each shard is written to a temporary file, flushed to disk and renamed into place.
A run killed at any moment therefore leaves either a complete shard or an ignored temporary
file, never a corrupt shard. The next run loads the complete shards and embeds only what is
missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from llmesr.data.io import atomic_file, make_dirs
from llmesr.errors import LlmesrError


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Shards of (key, vector) pairs for one encoder identity."""

    def __init__(self, root: str | Path, identity: str):
        self.identity = identity
        self.dir = Path(root) / hashlib.sha256(identity.encode()).hexdigest()[:24]
        make_dirs(self.dir, "embedding cache folder")
        ident = self.dir / "identity.json"
        if not ident.exists():
            tmp = ident.with_name(f".identity.{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps({"identity": identity}) + "\n")
            os.replace(tmp, ident)
        for stale in self.dir.glob(".*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._loaded: set[str] = set()
        self.dim: int | None = None
        self.refresh()

    def refresh(self) -> int:
        """Index the shards written since (by other processes sharing the cache); returns
        how many were added."""
        new = [p for p in sorted(self.dir.glob("shard-*.npz")) if p.name not in self._loaded]
        for shard in new:
            self._loaded.add(shard.name)
            self._load_shard(shard)
        return len(new)

    def _load_shard(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                keys, vecs = z["keys"], z["vectors"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            # A shard is renamed into place only when complete; an unreadable one means the
            # disk lost it. Set it aside and recompute its texts rather than fail.
            path.rename(path.with_suffix(".corrupt"))
            return
        if self.dim is None:
            self.dim = int(vecs.shape[1])
        elif vecs.shape[1] != self.dim:
            raise LlmesrError(f"embedding cache {self.dir} mixes dimensions {self.dim} and "
                              f"{vecs.shape[1]}; delete the folder")
        s = len(self._shards)
        self._shards.append(vecs)
        # numpy's S32 drops trailing NUL bytes: a digest that ends in 0x00 (1 in 256) comes
        # back short, so pad it to its 32 bytes again
        for row, key in enumerate(keys.tolist()):
            self._index[key.ljust(32, b"\0")] = (s, row)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def get(self, keys: list[bytes]) -> np.ndarray:
        """Vectors for keys that are all present, in order."""
        if not keys:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        out = np.empty((len(keys), self.dim or 0), dtype=np.float32)
        for i, key in enumerate(keys):
            s, row = self._index[key]
            out[i] = self._shards[s][row]
        return out

    def put(self, keys: list[bytes], vectors: np.ndarray) -> None:
        """Write one shard atomically and index it."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise LlmesrError(f"encoder returned {vectors.shape[1]}-d vectors but the cache "
                              f"holds {self.dim}-d ones for the same identity")
        key_arr = np.array(keys, dtype="S32")
        # flushed, given the usual permissions and renamed into place (.shard-*.tmp until then)
        name = f"shard-{uuid.uuid4().hex}.npz"
        with atomic_file(self.dir / name) as f:
            np.savez(f, keys=key_arr, vectors=vectors)
        self._loaded.add(name)
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        s = len(self._shards)
        self._shards.append(vectors)
        for row, key in enumerate(keys):
            self._index[key] = (s, row)


def embed_texts(texts: list[str], encode: Callable[[list[str]], np.ndarray],
                cache: EmbeddingCache, *, shard_size: int = 1024, desc: str = "embedding",
                progress: bool = True) -> tuple[np.ndarray, dict[str, int]]:
    """Embed ``texts`` through ``cache``: only texts not cached are encoded.

    Returns the (len(texts), D) float32 matrix and counts ``{"texts", "unique", "cached",
    "computed"}``. Work is saved shard by shard, so an interrupted call loses at most one shard.

    Under torchrun (``llmesr.distributed``) every process encodes every N-th of
    the missing texts (in length order, so the shares cost alike) into the shared cache,
    waits for the others and reads their shards back: the cache is the merge point.
    """
    from llmesr import distributed as ddp

    keys = [text_key(t) for t in texts]
    first: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    # Similar lengths in one batch waste less padding in a transformer encoder.
    todo = sorted((k for k in first if k not in cache), key=lambda k: len(texts[first[k]]))
    stats = {"texts": len(texts), "unique": len(first), "cached": len(first) - len(todo),
             "computed": len(todo)}
    mine = todo[ddp.rank()::ddp.world_size()]
    with tqdm(total=len(mine), desc=desc, unit="text", disable=not progress or not mine,
              dynamic_ncols=True) as bar:
        for start in range(0, len(mine), shard_size):
            chunk = mine[start:start + shard_size]
            vectors = encode([texts[first[k]] for k in chunk])
            cache.put(chunk, vectors)
            bar.update(len(chunk))
    if ddp.active():
        ddp.barrier()            # every process's shards are on disk
        cache.refresh()
        missing = sum(k not in cache for k in first)
        if missing:
            raise LlmesrError(f"{missing} embeddings are missing from the shared cache "
                              f"{cache.dir} after every process finished: all processes "
                              "must see the same cache folder (--cache-dir on a shared disk)")
    return cache.get(keys), stats
