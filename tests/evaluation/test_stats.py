from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from llmesr.errors import LlmesrError
from llmesr.evaluation.stats import holm, paired_tests, per_case


def test_per_case_by_hand():
    r = np.array([0, 3, 9, 10, 25])
    assert per_case(r, "HR@10").tolist() == [1, 1, 1, 0, 0]
    assert per_case(r, "NDCG@10") == pytest.approx([1, 1 / math.log2(5), 1 / math.log2(11), 0, 0])
    assert per_case(r, "MRR") == pytest.approx([1, 1 / 4, 1 / 10, 1 / 11, 1 / 26])
    assert per_case(r, "MRR@10") == pytest.approx([1, 1 / 4, 1 / 10, 0, 0])
    assert per_case(np.array([4.5]), "HR@5").tolist() == [1.0]     # an average-tie rank
    with pytest.raises(LlmesrError, match="unknown metric"):
        per_case(r, "AUC")


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([math.nan, 0.01, 0.02])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.02, 0.02])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]                  # capped at 1
    assert len(holm([])) == 0


def test_paired_tests_against_scipy_and_edge_cases():
    rng = np.random.default_rng(0)
    a = rng.random(50)
    b = a - 0.05 + 0.1 * rng.random(50)
    t = paired_tests(a, b)
    assert t["n"] == 50 and t["mean_diff"] == pytest.approx(float((a - b).mean()))
    assert t["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert t["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a - b).pvalue)
    same = paired_tests(a, a)
    assert same["p_ttest"] == 1.0 and same["p_wilcoxon"] == 1.0
    shifted = paired_tests(a + 1.0, a)
    assert shifted["p_ttest"] == 0.0 and shifted["p_wilcoxon"] < 1e-9
    assert math.isnan(paired_tests(a[:1], b[:1])["p_ttest"])
    with pytest.raises(ValueError, match="same length"):
        paired_tests(a, b[:3])
