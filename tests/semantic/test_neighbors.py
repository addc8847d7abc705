"""Blocked top-K similar-user search (llmesr.semantic.neighbors)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from llmesr.errors import LlmesrError
from llmesr.semantic.neighbors import recall_at, top_k_similar

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")


def brute_force(emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 numpy reference: full matrix, self set to -inf, lexsort (score desc, index asc)."""
    x = emb.astype(np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    cols = np.arange(len(x))
    order = np.array([np.lexsort((cols, -row))[:k] for row in sims])
    return order, np.take_along_axis(sims, order, axis=1)


def clustered(n_users: int = 2000, dim: int = 32, centres: int = 40, noise: float = 0.3,
              seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    labels = rng.integers(0, centres, n_users)
    return (c[labels] + noise * rng.standard_normal((n_users, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def random_emb() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((300, 24)).astype(np.float32) * 7.5


def test_exact_matches_brute_force(random_emb):
    k = 15
    idx, sc = top_k_similar(random_emb, k, progress=False)
    ref_idx, ref_sc = brute_force(random_emb, k + 1)
    assert idx.dtype == np.int32 and sc.dtype == np.float32
    assert idx.shape == sc.shape == (300, k)
    # positions whose reference score is > 1e-5 away from both neighbours in the ranking are
    # not (near-)ties, so float32 vs float64 rounding cannot reorder them: indices must agree
    padded = np.hstack([np.full((300, 1), np.inf), ref_sc])
    clear = (padded[:, :-2] - padded[:, 1:-1] > 1e-5) & (padded[:, 1:-1] - padded[:, 2:] > 1e-5)
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(idx[clear], ref_idx[:, :k][clear])
    np.testing.assert_allclose(sc, ref_sc[:, :k], atol=1e-5)
    assert (idx != np.arange(300)[:, None]).all()
    assert (np.diff(sc, axis=1) <= 0).all()


def test_block_size_does_not_change_results(random_emb):
    one = top_k_similar(random_emb, 20, block_size=10_000, progress=False)
    for bs in (1, 7, 64, 299):
        blocked = top_k_similar(random_emb, 20, block_size=bs, progress=False)
        np.testing.assert_array_equal(blocked[0], one[0])
        np.testing.assert_allclose(blocked[1], one[1], atol=1e-6)


def test_duplicates_find_each_other_but_not_themselves():
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((60, 16)).astype(np.float32)
    dup_rows = [3, 10, 41, 57]
    emb[dup_rows] = emb[3]
    emb[41] *= 5.0  # same direction, different scale: still cosine 1
    idx, sc = top_k_similar(emb, 5, progress=False)
    for r in dup_rows:
        others = sorted(set(dup_rows) - {r})
        assert r not in idx[r]
        assert sorted(idx[r, :3].tolist()) == others
        np.testing.assert_allclose(sc[r, :3], 1.0, atol=1e-6)
        assert sc[r, 3] < 0.999


def test_exact_ties_broken_by_smaller_index():
    # one-hot rows: many exact ties (0.0 and 1.0) that straddle the cut at k
    emb = np.zeros((12, 3), dtype=np.float32)
    emb[np.arange(12), np.arange(12) % 3] = 1.0  # rows 0,3,6,9 identical, 1,4,7,10, 2,5,8,11
    idx, sc = top_k_similar(emb, 5, progress=False, block_size=5)
    np.testing.assert_array_equal(idx[0], [3, 6, 9, 1, 2])
    np.testing.assert_array_equal(sc[0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(idx[4], [1, 7, 10, 0, 2])
    np.testing.assert_array_equal(idx[11], [2, 5, 8, 0, 1])


def test_zero_rows_give_no_nan():
    emb = np.random.default_rng(3).standard_normal((20, 8)).astype(np.float32)
    emb[[0, 7]] = 0.0
    idx, sc = top_k_similar(emb, 6, progress=False)
    assert np.isfinite(sc).all()
    # a zero row is similar (0) to everyone: its neighbours are the smallest other indices
    np.testing.assert_array_equal(idx[0], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(sc[0], 0.0)
    assert (idx != np.arange(20)[:, None]).all()


def test_scale_does_not_matter():
    emb = np.random.default_rng(4).standard_normal((50, 8))
    emb[5] *= 1e-30
    emb[6] *= 1e30
    base = top_k_similar(emb, 4, progress=False)
    scaled = top_k_similar(emb * 1e200, 4, progress=False)
    np.testing.assert_array_equal(base[0], scaled[0])
    assert np.isfinite(base[1]).all()


def test_deterministic(random_emb):
    a = top_k_similar(random_emb, 10, progress=False, block_size=33)
    b = top_k_similar(random_emb, 10, progress=False, block_size=33)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_k_must_be_smaller_than_users():
    emb = np.ones((5, 3), dtype=np.float32)
    with pytest.raises(LlmesrError, match=r"k=5 needs at least k\+1 users"):
        top_k_similar(emb, 5, progress=False)
    idx, _ = top_k_similar(emb, 4, progress=False)  # k = U - 1 is fine: everyone else
    np.testing.assert_array_equal(np.sort(idx[2]), [0, 1, 3, 4])


def test_bad_inputs():
    with pytest.raises(LlmesrError, match="unknown neighbour backend.*exact.*faiss-ivf"):
        top_k_similar(np.ones((5, 3)), 2, backend="annoy")
    with pytest.raises(LlmesrError, match="2-D"):
        top_k_similar(np.ones(5), 2)
    bad = np.ones((5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(LlmesrError, match="row 2"):
        top_k_similar(bad, 2, progress=False)


def test_recall_at():
    ref = np.array([[1, 2, 3], [4, 5, 6]])
    cand = np.array([[3, 9, 1], [-1, -1, 4]])
    assert recall_at(ref, ref, 3) == 1.0
    assert recall_at(ref, cand, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at(ref, cand, 1) == 0.0
    with pytest.raises(LlmesrError):
        recall_at(ref, cand, 4)


def test_missing_faiss_is_a_user_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(LlmesrError, match="pip install faiss-cpu"):
        top_k_similar(np.ones((5, 3)), 2, backend="faiss", progress=False)


@needs_faiss
def test_faiss_flat_equals_exact(random_emb):
    exact = top_k_similar(random_emb, 15, progress=False)
    flat = top_k_similar(random_emb, 15, backend="faiss", block_size=64, progress=False)
    assert flat[0].dtype == np.int32 and flat[1].dtype == np.float32
    assert recall_at(exact[0], flat[0], 15) == 1.0
    np.testing.assert_array_equal(flat[0], exact[0])
    np.testing.assert_allclose(flat[1], exact[1], atol=1e-5)


@needs_faiss
def test_faiss_flat_excludes_self_with_duplicates():
    emb = np.random.default_rng(5).standard_normal((40, 8)).astype(np.float32)
    emb[[1, 2, 3, 4, 5]] = emb[1]
    idx, sc = top_k_similar(emb, 3, backend="faiss", progress=False)
    assert (idx != np.arange(40)[:, None]).all()
    for r in (1, 2, 3, 4, 5):
        assert set(idx[r]) <= {1, 2, 3, 4, 5}
        np.testing.assert_allclose(sc[r], 1.0, atol=1e-5)


@needs_faiss
@pytest.mark.parametrize("backend,opts", [("faiss-ivf", {"nprobe": 8}),
                                          ("faiss-hnsw", {})])
def test_approximate_backends_recall(backend, opts):
    emb = clustered()
    exact_idx, _ = top_k_similar(emb, 10, progress=False)
    idx, sc = top_k_similar(emb, 10, backend=backend, progress=False, **opts)
    assert idx.shape == (len(emb), 10) and idx.dtype == np.int32
    assert (idx != np.arange(len(emb))[:, None]).all()
    assert recall_at(exact_idx, idx, 10) >= 0.9
    again = top_k_similar(emb, 10, backend=backend, progress=False, **opts)
    np.testing.assert_array_equal(again[0], idx)
