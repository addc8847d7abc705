"""Significance tests on per-user metrics: paired t-test, Wilcoxon signed-rank, Holm correction.

Two models evaluated on the same test cases give paired per-case values (e.g. the NDCG@10 of
each user). With several seeds, each case's value is first averaged over the seeds of each
model, so the test asks whether the model is better on the same users, not on a lucky seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from llmesr.errors import LlmesrError


def per_case(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-case values of ``metric`` ("HR@k", "NDCG@k", "MRR@k" or "MRR") from 0-based ranks
    (one column of :func:`llmesr.evaluation.metrics.per_user_metrics`)."""
    from llmesr.evaluation.metrics import per_user_metrics

    name, _, k = metric.partition("@")
    if name not in ("HR", "NDCG", "MRR") or (k and not k.isdigit()) or (not k and name != "MRR"):
        raise LlmesrError(f"unknown metric {metric!r}; use HR@k, NDCG@k, MRR@k or MRR")
    return per_user_metrics(ranks, ks=(int(k),) if k else (1,))[metric]


def paired_tests(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Two-sided paired tests of ``a`` against ``b`` (same cases, same order).

    Returns ``{"n", "mean_diff", "p_ttest", "p_wilcoxon"}``. Where every difference is zero
    both p-values are 1 (no evidence of a difference); with fewer than two cases they are NaN.
    The Wilcoxon test drops zero differences (Wilcoxon's original treatment, SciPy's default).
    """
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired tests need two 1-d arrays of the same length; got {a.shape} "
                         f"and {b.shape}")
    d = a - b
    out = {"n": int(len(d)), "mean_diff": float(d.mean()) if len(d) else math.nan}
    if len(d) < 2:
        return {**out, "p_ttest": math.nan, "p_wilcoxon": math.nan}
    if not np.any(d):
        return {**out, "p_ttest": 1.0, "p_wilcoxon": 1.0}
    if np.ptp(d) <= 1e-12 * np.abs(d).max():
        # a constant non-zero difference (up to rounding): the t statistic is infinite
        p_t = 0.0
    else:
        p_t = float(stats.ttest_rel(a, b).pvalue)
    p_w = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return {**out, "p_ttest": p_t, "p_wilcoxon": p_w}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN.

    Reject hypothesis i at family-wise level a when ``holm(p)[i] < a``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out
