"""PCA of item embeddings to the collaborative-view size (SPEC §3.4).

The paper calls ``sklearn.decomposition.PCA(n_components=64).fit_transform`` on all items:
mean-centred, no whitening. This is the same transform computed exactly and deterministically,
through the eigen-decomposition of the D × D covariance (cheap for any number of items). Each
component's sign is fixed so that its largest-magnitude loading is positive, which makes the
result independent of the LAPACK build.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmesr.errors import LlmesrError


@dataclass
class PCAResult:
    projected: np.ndarray         # (N, k) float32
    components: np.ndarray        # (k, D) float32, rows are unit principal axes
    mean: np.ndarray              # (D,) float32
    explained_variance_ratio: np.ndarray  # (k,)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project new rows (e.g. cold-start items) exactly as the training items were."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T.astype(
            np.float64)).astype(np.float32)


def pca(x: np.ndarray, k: int = 64) -> PCAResult:
    """Project ``x`` (N, D) on its top-``k`` principal components."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if k > min(n, d):
        raise LlmesrError(f"PCA to {k} dimensions needs at least {k} items and a {k}-d "
                          f"embedding; got {n} items of dimension {d}")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(n - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:k]
    comps = vecs[:, order].T                      # (k, D)
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    total = vals.clip(min=0).sum()
    ratio = vals[order].clip(min=0) / total if total > 0 else np.zeros(k)
    return PCAResult(projected=(xc @ comps.T).astype(np.float32),
                     components=comps.astype(np.float32), mean=mean.astype(np.float32),
                     explained_variance_ratio=ratio)
