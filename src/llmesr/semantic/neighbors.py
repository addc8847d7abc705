"""Top-K most similar *other* users by cosine similarity of their LLM embeddings.

LLM-ESR's self-distillation guides each user's sequence encoder with the users whose LLM
embeddings are closest to theirs. The original code builds the dense users x users similarity
matrix (22 GB for 52k users) and takes ``argsort(...)[:, 1:K+1]``, assuming column 0 is the user
itself. That assumption is wrong whenever two users have the same embedding (the tie may put the
other user first, and then the user keeps itself as a neighbour and loses a real one). Here the
search runs in blocks of query rows, never materialises U x U, and masks the user itself
explicitly (**deviation from the paper's code**: explicit self mask instead of dropping
column 0; identical other users are kept and rank first).

Rows are 0-based: row ``u`` of the embedding matrix is user id ``u + 1`` in llmesr datasets
(id 0 is padding), and the returned indices are row numbers, not user ids.

Backends (``top_k_similar(..., backend=...)``):

- ``"exact"`` (default): blocked exact search with torch in float32, on CUDA when available.
- ``"faiss"``: exact ``faiss.IndexFlatIP``.
- ``"faiss-ivf"``: approximate ``faiss.IndexIVFFlat`` (inner product).
- ``"faiss-hnsw"``: approximate ``faiss.IndexHNSWFlat`` (inner product).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmesr.errors import LlmesrError

BACKENDS = ("exact", "faiss", "faiss-ivf", "faiss-hnsw")

#: rows per chunk when normalising the embeddings (bounds the float64 temporaries)
_NORMALISE_CHUNK = 16384


def normalise_rows(emb: np.ndarray) -> np.ndarray:
    """(U, D) float32 copy of ``emb`` with unit-L2 rows; all-zero rows stay zero.

    Works at any scale (rows are divided by their largest absolute value first, in float64, so
    neither tiny nor huge values under- or overflow). Non-finite values raise
    :class:`LlmesrError`.
    """
    x = np.asarray(emb)
    if x.ndim != 2:
        raise LlmesrError(f"embeddings must be a 2-D (users, dim) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise LlmesrError(f"embeddings must be numeric, got dtype {x.dtype}")
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], _NORMALISE_CHUNK):
        chunk = np.asarray(x[start:start + _NORMALISE_CHUNK], dtype=np.float64)
        if not np.isfinite(chunk).all():
            bad = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
            raise LlmesrError(f"embedding row {bad} contains NaN or infinity")
        peak = np.abs(chunk).max(axis=1, keepdims=True) if chunk.shape[1] else \
            np.zeros((chunk.shape[0], 1))
        peak[peak == 0] = 1.0
        chunk = chunk / peak
        norm = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))[:, None]
        norm[norm == 0] = 1.0
        out[start:start + chunk.shape[0]] = chunk / norm
    return out


def top_k_similar(emb: np.ndarray, k: int = 100, *, backend: str = "exact",
                  block_size: int = 4096, progress: bool = True, nlist: int | None = None,
                  nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``emb``, the ``k`` most cosine-similar *other* rows.

    Args:
        emb: (U, D) embeddings, any numeric dtype and scale. Cosine similarity is the dot
            product of the L2-normalised rows; an all-zero row has similarity 0 to every row.
        k: neighbours per row; needs ``k < U``.
        backend: one of ``"exact"``, ``"faiss"``, ``"faiss-ivf"``, ``"faiss-hnsw"``.
        block_size: query rows per block. The exact backend holds one (block_size, U) float32
            similarity block (``block_size * U * 4`` bytes: 1.6 GB at 4096 x 100k); it never
            allocates U x U.
        progress: show a tqdm bar over the query blocks.
        nlist: IVF lists (``"faiss-ivf"``); default ``int(4 * sqrt(U))``.
        nprobe: lists probed per query (``"faiss-ivf"``).
        hnsw_m: graph degree (``"faiss-hnsw"``).
        ef_search: HNSW search breadth (``"faiss-hnsw"``); raised to ``k + 1`` if smaller.
        seed: seeds the IVF training sample (and faiss k-means).

    Returns:
        ``(indices, scores)``, both (U, k): ``indices`` int32 0-based row numbers (row ``u`` is
        user id ``u + 1`` in llmesr datasets), ``scores`` float32 cosine similarities, each row
        sorted by decreasing similarity with ties broken by the smaller index. A row never
        contains itself (explicit self mask, not "drop column 0" as in the paper's code), so
        duplicated users find each other first.

        Exact backends return the true top-k of the float32 similarities, including ties at the
        k-th place (``"exact"`` resolves those by smaller index; ``"faiss"`` orders ties inside
        its result by index but may pick any of the tied rows at the cut). Approximate backends
        may miss neighbours; if they find fewer than ``k`` other rows, the missing entries are
        index ``-1`` with score ``-inf``. Scores are float32 dot products and may exceed 1 by
        a rounding error.

    Raises:
        LlmesrError: ``k >= U``, bad shapes/values, an unknown backend, or a faiss backend
            without faiss installed.
    """
    if backend not in BACKENDS:
        raise LlmesrError(f"unknown neighbour backend {backend!r}; choose one of "
                          + ", ".join(BACKENDS))
    x = np.asarray(emb)
    if x.ndim != 2:
        raise LlmesrError(f"embeddings must be a 2-D (users, dim) array, got shape {x.shape}")
    n_users = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise LlmesrError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if k >= n_users:
        raise LlmesrError(f"k={k} needs at least k+1 users ({k + 1}), got {n_users}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or block_size < 1:
        raise LlmesrError(f"block_size must be a positive integer, got {block_size!r}")
    block_size = int(block_size)
    unit = normalise_rows(x)
    if backend == "exact":
        return _exact_torch(unit, k, block_size, progress)
    faiss = _import_faiss(backend)
    index = _build_faiss_index(faiss, backend, unit, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                               ef_search=max(int(ef_search), k + 1), seed=seed)
    return _search_faiss(index, unit, k, block_size, progress, desc=backend)


def recall_at(reference: np.ndarray, candidate: np.ndarray, k: int) -> float:
    """Mean over rows of ``|reference[u, :k] ∩ candidate[u, :k]| / k``.

    Negative ids (``-1`` padding from approximate backends) never count as a match. Assumes
    the ids within a row are distinct, as neighbour lists are.
    """
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.ndim != 2 or cand.ndim != 2 or ref.shape[0] != cand.shape[0]:
        raise LlmesrError(f"recall_at needs two 2-D arrays with the same rows, got "
                          f"{ref.shape} and {cand.shape}")
    if k < 1 or k > min(ref.shape[1], cand.shape[1]):
        raise LlmesrError(f"recall_at: k={k} must be in 1..{min(ref.shape[1], cand.shape[1])}")
    n_rows = ref.shape[0]
    if n_rows == 0:
        return float("nan")
    ref = ref[:, :k].astype(np.int64)
    cand = cand[:, :k].astype(np.int64)
    width = int(max(ref.max(), cand.max(), 0)) + 1
    rows = np.arange(n_rows, dtype=np.int64)[:, None] * width
    ref_keys = (rows + ref)[ref >= 0]
    cand_keys = (rows + cand)[cand >= 0]
    hits = int(np.isin(cand_keys, ref_keys, assume_unique=True).sum())
    return hits / (n_rows * k)


# ---------------------------------------------------------------------------------------------
# exact search in torch


def _order_ties_by_index(vals: Any, idx: Any) -> tuple[Any, Any]:
    """Sort each row by (decreasing value, increasing index); torch tensors (B, n)."""
    import torch

    by_index = torch.argsort(idx, dim=1)
    vals = torch.gather(vals, 1, by_index)
    idx = torch.gather(idx, 1, by_index)
    by_value = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return torch.gather(vals, 1, by_value), torch.gather(idx, 1, by_value)


def _exact_torch(unit: np.ndarray, k: int, block_size: int,
                 progress: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is installed with the model extras
        raise LlmesrError("the exact neighbour backend needs torch: pip install torch "
                          "(or use backend='faiss' with pip install faiss-cpu)") from exc
    n_users = unit.shape[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    indices = np.empty((n_users, k), dtype=np.int32)
    scores = np.empty((n_users, k), dtype=np.float32)
    block_size = min(block_size, n_users)
    # k+1 candidates: the (k+1)-th tells whether a tie straddles the cut at k
    take = min(k + 1, n_users)
    with torch.no_grad():
        table = torch.from_numpy(unit).to(device)  # moved once
        # one reusable (block, U) buffer: a fresh multi-GB allocation per block costs page faults
        buffer = torch.empty((block_size, n_users), dtype=torch.float32, device=device)
        starts = range(0, n_users, block_size)
        for start in tqdm(starts, desc="neighbours (exact)", unit="block", disable=not progress):
            stop = min(start + block_size, n_users)
            rows = stop - start
            sims = buffer[:rows]
            torch.matmul(table[start:stop], table.T, out=sims)
            local = torch.arange(rows, device=device)
            sims[local, local + start] = float("-inf")  # explicit self mask
            vals, idx = torch.topk(sims, take, dim=1, largest=True, sorted=True)
            vals, idx = _order_ties_by_index(vals, idx)
            vals_k, idx_k = vals[:, :k], idx[:, :k]
            if take > k:
                straddle = torch.nonzero(vals[:, k] == vals[:, k - 1]).flatten()
                if straddle.numel():
                    vals_k, idx_k = vals_k.clone(), idx_k.clone()
                    _resolve_cut_ties(sims, vals_k, idx_k, straddle.tolist())
            indices[start:stop] = idx_k.to(torch.int32).cpu().numpy()
            scores[start:stop] = vals_k.cpu().numpy()
    return indices, scores


def _resolve_cut_ties(sims: Any, vals: Any, idx: Any, rows: list[int]) -> None:
    """For rows whose k-th value ties with unselected rows, keep the smallest tied indices."""
    import torch

    k = idx.shape[1]
    for r in rows:
        cut = vals[r, k - 1]
        above = int((vals[r] > cut).sum())
        tied = torch.nonzero(sims[r] == cut).flatten()  # ascending indices
        idx[r, above:] = tied[:k - above]
        vals[r, above:] = cut


# ---------------------------------------------------------------------------------------------
# faiss backends


def _import_faiss(backend: str) -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise LlmesrError(f"backend {backend!r} needs faiss: pip install faiss-cpu "
                          "(or use backend='exact')") from exc
    return faiss


def _build_faiss_index(faiss: Any, backend: str, unit: np.ndarray, *, nlist: int | None,
                       nprobe: int, hnsw_m: int, ef_search: int, seed: int) -> Any:
    n_users, dim = unit.shape
    if backend == "faiss":
        index = faiss.IndexFlatIP(dim)
    elif backend == "faiss-ivf":
        n_lists = int(nlist) if nlist is not None else max(1, int(4 * math.sqrt(n_users)))
        if not 1 <= n_lists <= n_users:
            raise LlmesrError(f"nlist={n_lists} must be in 1..{n_users} (the number of users)")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        n_train = min(n_users, 256 * n_lists)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n_users, size=n_train, replace=False))
        index.train(np.ascontiguousarray(unit[sample]))
        index.nprobe = max(1, min(int(nprobe), n_lists))
    else:  # faiss-hnsw
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = int(ef_search)
    index.add(unit)
    return index


def _search_faiss(index: Any, unit: np.ndarray, k: int, block_size: int, progress: bool,
                  desc: str) -> tuple[np.ndarray, np.ndarray]:
    n_users = unit.shape[0]
    take = k + 1
    indices = np.empty((n_users, k), dtype=np.int32)
    scores = np.empty((n_users, k), dtype=np.float32)
    starts = range(0, n_users, block_size)
    for start in tqdm(starts, desc=f"neighbours ({desc})", unit="block", disable=not progress):
        stop = min(start + block_size, n_users)
        dist, ids = index.search(unit[start:stop], take)
        dist = np.where(ids < 0, -np.inf, dist).astype(np.float32)
        self_ids = np.arange(start, stop)[:, None]
        drop = ids == self_ids
        # self not found: drop the last (least similar) result instead
        drop[~drop.any(axis=1), take - 1] = True
        keep = ~drop
        ids = ids[keep].reshape(stop - start, k)
        dist = dist[keep].reshape(stop - start, k)
        # order equal scores by index; -1 padding (score -inf) stays at the end
        sort_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
        order = _lexsort_rows(sort_ids, dist)
        indices[start:stop] = np.take_along_axis(ids, order, axis=1)
        scores[start:stop] = np.take_along_axis(dist, order, axis=1)
    return indices, scores


def _lexsort_rows(ids: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Per-row permutation sorting by (decreasing dist, increasing id)."""
    by_id = np.argsort(ids, axis=1, kind="stable")
    by_dist = np.argsort(-np.take_along_axis(dist, by_id, axis=1), axis=1, kind="stable")
    return np.take_along_axis(by_id, by_dist, axis=1)
