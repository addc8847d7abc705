"""Metrics against hand-computed values (DESIGN.md: "metrics checked against hand-computed")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmesr.errors import LlmesrError
from llmesr.evaluation.metrics import (
    metrics_from_ranks,
    per_user_metrics,
    ranks_from_scores,
)

# ------------------------------------------------------------------------------------------------
# ranks_from_scores


def test_ranks_simple_no_ties():
    pos = torch.tensor([0.5, 3.0, -1.0])
    other = torch.tensor([[0.9, 0.1, 0.7, 0.2],
                          [1.0, 2.0, 0.0, -5.0],
                          [0.0, 1.0, 2.0, 3.0]])
    r = ranks_from_scores(pos, other)
    assert r.dtype == torch.int64
    assert r.tolist() == [2, 0, 4]


def test_ties_positive_tied_with_three_others():
    # Positive 1.0; others: one strictly higher (2.0), three tied (1.0), two lower.
    pos = torch.tensor([1.0])
    other = torch.tensor([[2.0, 1.0, 0.5, 1.0, 1.0, -3.0]])
    assert ranks_from_scores(pos, other, "pessimistic").tolist() == [4]
    assert ranks_from_scores(pos, other, "optimistic").tolist() == [1]
    avg = ranks_from_scores(pos, other, "average")
    assert avg.dtype == torch.float64
    assert avg.tolist() == [2.5]


def test_default_policy_is_pessimistic_and_constant_model_gets_worst_rank():
    pos = torch.zeros(2)
    other = torch.zeros(2, 100)
    assert ranks_from_scores(pos, other).tolist() == [100, 100]


def test_valid_mask_drops_candidates():
    pos = torch.tensor([1.0, 1.0])
    other = torch.tensor([[5.0, 1.0, 4.0, 0.0],
                          [5.0, 1.0, 4.0, 0.0]])
    valid = torch.tensor([[True, True, True, True],
                          [False, True, False, True]])
    assert ranks_from_scores(pos, other, "pessimistic", valid).tolist() == [3, 1]
    assert ranks_from_scores(pos, other, "optimistic", valid).tolist() == [2, 0]
    assert ranks_from_scores(pos, other, "average", valid).tolist() == [2.5, 0.5]


def test_nan_positive_is_worst_under_every_policy():
    pos = torch.tensor([float("nan"), float("nan")])
    other = torch.tensor([[0.0, 1.0, 2.0], [0.0, float("nan"), 2.0]])
    valid = torch.tensor([[True, True, True], [True, False, True]])
    for ties in ("pessimistic", "optimistic"):
        assert ranks_from_scores(pos, other, ties, valid).tolist() == [3, 2]
    assert ranks_from_scores(pos, other, "average", valid).tolist() == [3.0, 2.0]


def test_nan_other_counts_as_a_tie():
    pos = torch.tensor([1.0])
    other = torch.tensor([[float("nan"), float("nan"), 0.0]])
    assert ranks_from_scores(pos, other, "pessimistic").tolist() == [2]
    assert ranks_from_scores(pos, other, "optimistic").tolist() == [0]
    assert ranks_from_scores(pos, other, "average").tolist() == [1.0]


def test_mixed_dtypes_promote():
    pos = torch.tensor([1.0], dtype=torch.float16)
    other = torch.tensor([[1.0001, 0.5]], dtype=torch.float32)
    # 1.0001 > 1.0 in float32; it would round to 1.0 in float16 and tie.
    assert ranks_from_scores(pos, other, "optimistic").tolist() == [1]


def test_unknown_tie_policy_is_a_user_error():
    with pytest.raises(LlmesrError, match="tie policy"):
        ranks_from_scores(torch.zeros(1), torch.zeros(1, 2), "random")


def test_shape_mismatch():
    with pytest.raises(ValueError):
        ranks_from_scores(torch.zeros(2), torch.zeros(3, 4))
    with pytest.raises(ValueError):
        ranks_from_scores(torch.zeros(2), torch.zeros(2, 4), valid=torch.ones(2, 3, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# metrics_from_ranks / per_user_metrics


def test_metrics_hand_computed():
    m = metrics_from_ranks(np.array([0, 1, 4, 12]))
    assert m["count"] == 4
    assert m["HR@5"] == pytest.approx(0.75, abs=1e-15)
    assert m["HR@10"] == pytest.approx(0.75, abs=1e-15)
    assert m["HR@20"] == pytest.approx(1.0, abs=1e-15)
    ndcg5 = (1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4
    assert m["NDCG@5"] == pytest.approx(ndcg5, rel=1e-12)
    assert m["NDCG@10"] == pytest.approx(ndcg5, rel=1e-12)
    assert m["NDCG@20"] == pytest.approx(ndcg5 + 1 / math.log2(14) / 4, rel=1e-12)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 13) / 4, rel=1e-12)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4, rel=1e-12)
    assert m["MRR@20"] == pytest.approx(m["MRR"], rel=1e-12)


def test_boundary_rank_equal_to_k_is_a_miss():
    m = metrics_from_ranks(np.array([10]), ks=(10,))
    assert m["HR@10"] == 0.0 and m["NDCG@10"] == 0.0 and m["MRR@10"] == 0.0
    m = metrics_from_ranks(np.array([9]), ks=(10,))
    assert m["HR@10"] == 1.0 and m["NDCG@10"] == pytest.approx(1 / math.log2(11))


def test_keys():
    m = metrics_from_ranks(np.array([3]), ks=(1, 10))
    assert set(m) == {"HR@1", "NDCG@1", "MRR@1", "HR@10", "NDCG@10", "MRR@10", "MRR", "count"}


def test_per_user_values_and_mean_agree():
    ranks = np.array([0, 1, 4, 12, 99])
    per = per_user_metrics(ranks, ks=(5,))
    np.testing.assert_array_equal(per["HR@5"], [1, 1, 1, 0, 0])
    np.testing.assert_allclose(per["NDCG@5"],
                               [1, 1 / math.log2(3), 1 / math.log2(6), 0, 0], rtol=1e-15)
    np.testing.assert_allclose(per["MRR"], [1, 1 / 2, 1 / 5, 1 / 13, 1 / 100], rtol=1e-15)
    m = metrics_from_ranks(ranks, ks=(5,))
    for key, values in per.items():
        assert m[key] == pytest.approx(values.mean(), rel=1e-15)


def test_average_tie_float_ranks():
    # The positive tied with 3 others and one strictly higher: average rank 1 + 3/2 = 2.5.
    m = metrics_from_ranks(np.array([2.5]), ks=(3,))
    assert m["HR@3"] == 1.0
    assert m["NDCG@3"] == pytest.approx(1 / math.log2(4.5))
    assert m["MRR"] == pytest.approx(1 / 3.5)


def test_accepts_torch_ranks():
    m = metrics_from_ranks(torch.tensor([0, 5]), ks=(5,))
    assert m["HR@5"] == 0.5


def test_empty_input_gives_nan_and_zero_count():
    m = metrics_from_ranks(np.array([], dtype=np.int64))
    assert m["count"] == 0
    assert all(math.isnan(v) for k, v in m.items() if k != "count")
    per = per_user_metrics(np.array([], dtype=np.int64))
    assert all(len(v) == 0 for v in per.values())


def test_invalid_ranks_and_ks():
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([-1]))
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([float("nan")]))
    with pytest.raises(LlmesrError):
        metrics_from_ranks(np.array([0]), ks=(0,))


def test_beyond_accuracy_by_hand():
    from llmesr.evaluation.metrics import beyond_accuracy

    # 4 items; popularity 10, 1, 2, 50 (index 0 unused); items 2 and 3 are tail items
    pop = np.array([0, 10, 1, 2, 50])
    tail = pop < 5
    tail[0] = False
    top = np.array([[4, 1], [4, 2], [3, 4]])
    masks = {"overall": np.array([True, True, True]), "tail_user": np.array([False, True, True]),
             "none": np.zeros(3, dtype=bool)}
    out = beyond_accuracy(top, masks, pop, tail, num_items=4)
    assert out["overall"] == pytest.approx({"coverage@2": 4 / 4, "tail_share@2": 2 / 6,
                                            "ARP@2": (50 + 10 + 50 + 1 + 2 + 50) / 6,
                                            "count": 3})
    assert out["tail_user"] == pytest.approx({"coverage@2": 3 / 4, "tail_share@2": 2 / 4,
                                              "ARP@2": (50 + 1 + 2 + 50) / 4, "count": 2})
    assert np.isnan(out["none"]["coverage@2"]) and out["none"]["count"] == 0
    with pytest.raises(ValueError, match="outside"):
        beyond_accuracy(np.array([[5, 1]]), {"overall": np.array([True])}, pop, tail, 4)
    # 0 is an empty slot (fewer admissible items than k): left out of every share
    short = beyond_accuracy(np.array([[4, 0], [2, 3]]), {"overall": np.ones(2, bool)}, pop,
                            tail, num_items=4)["overall"]
    assert short == pytest.approx({"coverage@2": 3 / 4, "tail_share@2": 2 / 3,
                                   "ARP@2": (50 + 1 + 2) / 3, "count": 2})
