"""``embed``: item and user embeddings, their PCA and similar users, for a prepared dataset.

Output: ``DATA_DIR/semantic/<encoder-slug>/``

| file | contents |
|---|---|
| ``items.npy`` | (N, D) float32, row i-1 = item i |
| ``users.npy`` | (U, D) float32, row u-1 = user u (from training items only) |
| ``items_pca.npy`` | (N, k) float32 PCA of ``items.npy`` (k = 64 by default) |
| ``pca_components.npy``, ``pca_mean.npy`` | the PCA transform, to project new items identically |
| ``neighbors.npy`` | (U, K) int32, 0-based rows of the K most similar *other* users |
| ``neighbor_scores.npy`` | (U, K) float32 cosine similarities |
| ``manifest.json`` | encoder, prompts, settings, counts, timings, file checksums (written last) |

Each stage records a fingerprint of its inputs. A rerun reuses any stage whose inputs did not
change, and the content-addressed cache (:mod:`llmesr.semantic.cache`) makes re-embedding
free, so a rerun after an interruption recomputes only what was not finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmesr import __version__
from llmesr.data.artifact import SequenceDataset, load_dataset
from llmesr.data.io import (atomic_file, make_dirs, os_errors_as_user_errors, sha256_file,
                            write_json_atomic)
from llmesr.data.registry import get_entry
from llmesr.errors import LlmesrError
from llmesr.semantic.cache import EmbeddingCache, embed_texts
from llmesr.semantic.encoders import TextEncoder, make_encoder
from llmesr.semantic.pca import pca
from llmesr.semantic.prompts import PromptBuilder, PromptConfig

KIND = "llmesr-semantic"
FORMAT_VERSION = 1

#: prompt domain by reader, for datasets that are not in the registry
_READER_DOMAIN = {"amazon2014": "product", "amazon2018": "product", "amazon2023": "product",
                  "yelp": "poi", "movielens-100k": "movie", "movielens-1m": "movie"}


def default_prompt_config(manifest: dict[str, Any]) -> PromptConfig:
    entry = get_entry(manifest.get("name", ""))
    if entry is not None and entry.prompt:
        return PromptConfig(**entry.prompt)
    return PromptConfig(domain=_READER_DOMAIN.get(manifest["reader"]["name"], "generic"))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array)


def _previous(out: Path) -> dict[str, Any]:
    try:
        m = json.loads((out / "manifest.json").read_text())
        return m if m.get("kind") == KIND else {}
    except (OSError, json.JSONDecodeError):
        return {}


def embed(data_dir: str | Path, *, encoder: TextEncoder | str | None = None,
          encoder_options: dict[str, Any] | None = None, prompt: PromptConfig | None = None,
          pca_dim: int = 64, neighbors: int = 100, backend: str = "exact",
          users: bool = True, cache_dir: str | Path | None = None, progress: bool = True,
          log=print) -> dict[str, Any]:
    """Embed a prepared dataset's items and users; return the manifest (see module doc).

    ``encoder`` is a :class:`TextEncoder` or a spec for :func:`make_encoder` (default: the
    bundled all-MiniLM-L6-v2). ``prompt`` defaults to the dataset's registry settings.
    ``neighbors=0`` or ``users=False`` skip the similar-user stage.
    """
    from llmesr.semantic.neighbors import BACKENDS

    t_start = time.perf_counter()
    if backend not in BACKENDS:  # fail before any embedding work
        raise LlmesrError(f"unknown similar-user backend {backend!r}; choose one of "
                          f"{', '.join(BACKENDS)}")
    if pca_dim < 0 or neighbors < 0:
        raise LlmesrError("--pca-dim and --neighbors must be >= 0")
    ds = load_dataset(data_dir)
    if ds.manifest["text"]["items_with_any_text"] == 0:
        raise LlmesrError(f"{data_dir} has no item text, so there is nothing to embed; prepare "
                          "it with an item-text file, or import the authors' embeddings with "
                          "'llmesr import-authors'")
    if users:
        ds.users          # a damaged users table fails here, before any embedding work
    enc = encoder if isinstance(encoder, TextEncoder) else make_encoder(
        encoder, **(encoder_options or {}))
    cfg = (prompt or default_prompt_config(ds.manifest)).validate()
    make_dirs(Path(data_dir) / "semantic", "embeddings folder")
    out = make_dirs(Path(data_dir) / "semantic" / enc.slug, "embeddings folder")
    from llmesr import distributed as ddp

    cache = EmbeddingCache(Path(cache_dir) if cache_dir else Path(data_dir) / "semantic" /
                           ".cache", enc.identity)
    ddp.barrier()    # under torchrun: no process writes a shard before all have opened it
    # A folder that cannot be written (permissions, a full disk, a file in the way) is the
    # user's to fix: one line, not a traceback. Finished stages stay reusable.
    with os_errors_as_user_errors(f"write the embeddings in {out}"):
        return _embed(ds, data_dir, enc, cfg, out, cache, pca_dim=pca_dim, neighbors=neighbors,
                      backend=backend, users=users, progress=progress, log=log,
                      t_start=t_start)


def _embed(ds: SequenceDataset, data_dir: str | Path, enc: TextEncoder, cfg: PromptConfig,
           out: Path, cache: EmbeddingCache, *, pca_dim: int, neighbors: int, backend: str,
           users: bool, progress: bool, log, t_start: float) -> dict[str, Any]:
    from llmesr import distributed as ddp

    # under torchrun every process embeds a share of the texts (embed_texts) and process 0
    # alone writes the folder, fits the PCA and searches the neighbours
    main = ddp.rank() == 0
    if not main:
        log = (lambda *a, **k: None)
    prev = _previous(out)
    prev_stages = prev.get("stages", {})
    builder = PromptBuilder(ds.item_table, cfg)
    stages: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def reusable(name: str, fingerprint: str, files: list[str]) -> bool:
        old = prev_stages.get(name, {})
        return old.get("fingerprint") == fingerprint and all(
            (out / f).is_file() and prev.get("files", {}).get(f) == sha256_file(out / f)
            for f in files)

    def embed_stage(name: str, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` into ``<name>.npy``, or reuse it when its inputs are unchanged."""
        fingerprint = _digest([enc.identity, _texts_digest(texts)])
        if reusable(name, fingerprint, [f"{name}.npy"]):
            stages[name] = prev_stages[name]
            vectors = np.load(out / f"{name}.npy")
            log(f"{name}: {len(vectors):,} embeddings unchanged")
            return vectors
        vectors, stats = embed_texts(texts, enc.encode, cache, shard_size=enc.batch_size * 8,
                                     desc=name, progress=progress and main)
        if main:
            _save_npy(out / f"{name}.npy", vectors)
        stages[name] = {"fingerprint": fingerprint, **stats}
        log(f"{name}: {stats['computed']:,} embedded, {stats['cached']:,} from the cache")
        return vectors

    # ---- items ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    item_texts = builder.item_prompts()
    items = embed_stage("items", item_texts)
    timings["items"] = time.perf_counter() - t0

    # ---- PCA ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if not main:
        if users:
            embed_stage("users", builder.user_prompts(
                ds.offsets, ds.items, ds.users["train_length"].to_numpy()))
        ddp.barrier()                  # until process 0 has written the folder
        return _previous(out)
    asked = pca_dim
    pca_dim = min(pca_dim, *items.shape)
    if pca_dim < asked:
        # a small catalogue (or a small embedding) cannot give more components than it has
        log(f"pca: {asked} dimensions asked for, but {items.shape[0]:,} items of dimension "
            f"{items.shape[1]} give at most {pca_dim}; using {pca_dim} (train with "
            f"--set hidden={pca_dim} to use them)")
    fp_pca = _digest([stages["items"]["fingerprint"], pca_dim])
    if pca_dim:
        if reusable("pca", fp_pca, ["items_pca.npy", "pca_components.npy", "pca_mean.npy"]):
            stages["pca"] = prev_stages["pca"]
        else:
            res = pca(items, pca_dim)
            _save_npy(out / "items_pca.npy", res.projected)
            _save_npy(out / "pca_components.npy", res.components)
            _save_npy(out / "pca_mean.npy", res.mean)
            stages["pca"] = {"fingerprint": fp_pca, "dim": pca_dim, "dim_asked": asked,
                             "explained_variance": round(float(
                                 res.explained_variance_ratio.sum()), 6)}
    timings["pca"] = time.perf_counter() - t0

    # ---- users ----------------------------------------------------------------------------
    if users:
        t0 = time.perf_counter()
        train_len = ds.users["train_length"].to_numpy()
        user_texts = builder.user_prompts(ds.offsets, ds.items, train_len)
        user_emb = embed_stage("users", user_texts)
        timings["users"] = time.perf_counter() - t0

        if neighbors:
            t0 = time.perf_counter()
            fp_nb = _digest([stages["users"]["fingerprint"], neighbors, backend])
            if reusable("neighbors", fp_nb, ["neighbors.npy", "neighbor_scores.npy"]):
                stages["neighbors"] = prev_stages["neighbors"]
            else:
                from llmesr.semantic.neighbors import top_k_similar

                k = min(neighbors, ds.num_users - 1)
                idx, scores = top_k_similar(user_emb, k, backend=backend, progress=progress)
                _save_npy(out / "neighbors.npy", idx.astype(np.int32))
                _save_npy(out / "neighbor_scores.npy", scores.astype(np.float32))
                stages["neighbors"] = {"fingerprint": fp_nb, "k": int(k), "backend": backend,
                                       "rows": "0-based user rows (row u-1 = user u)",
                                       "self_excluded": True}
            timings["neighbors"] = time.perf_counter() - t0

    files = {f.name: sha256_file(f) for f in sorted(out.glob("*.npy"))
             if f.stem in ("items", "users", "items_pca", "pca_components", "pca_mean",
                           "neighbors", "neighbor_scores")}
    manifest = {
        "kind": KIND, "format_version": FORMAT_VERSION, "llmesr_version": __version__,
        "dataset": {"name": ds.manifest["name"], "path": str(Path(data_dir).resolve()),
                    "manifest_sha256": sha256_file(Path(data_dir) / "manifest.json"),
                    "users": ds.num_users, "items": ds.num_items},
        "encoder": {**enc.describe(), "dim": int(items.shape[1])},
        "prompt": dataclasses.asdict(cfg),
        "examples": {"item": item_texts[:3],
                     "user": user_texts[:2] if users else []},
        "dim": int(items.shape[1]),
        "stages": stages,
        "timing_seconds": {k: round(v, 3) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "cache": str(cache.dir),
        "files": files,
    }
    write_json_atomic(out / "manifest.json", manifest)
    log(f"wrote {out} in {manifest['total_seconds']:.1f} s")
    ddp.barrier()
    return manifest
