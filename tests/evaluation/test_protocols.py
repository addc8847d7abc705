"""Protocol drivers: full-catalogue ranking, sampled negatives, long-tail groups."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from llmesr.errors import LlmesrError
from llmesr.evaluation import protocols
from llmesr.evaluation.protocols import (
    fixed_rng,
    full_ranking_ranks,
    group_metrics,
    sample_negatives,
    sampled_ranks,
)


def matrix_score_fn(matrix: torch.Tensor):
    """score_fn backed by a fixed (U, M) score matrix; records the calls it gets."""
    calls = []

    def score_fn(users, candidates):
        calls.append((users.clone(), None if candidates is None else candidates.clone()))
        rows = matrix[users]
        return rows if candidates is None else torch.gather(rows, 1, candidates)

    score_fn.calls = calls
    return score_fn


# ------------------------------------------------------------------------------------------------
# full ranking

# N = 5 items (ids 1..5), column 0 = padding, column 6 = mask token.
SCORES = torch.tensor([
    # pad   1    2    3    4    5   mask
    [9.0, 0.1, 0.5, 0.3, 0.9, 0.2, 9.0],
    [9.0, 0.4, 0.4, 0.4, 0.1, 0.4, 9.0],
    [9.0, 0.5, 0.4, 0.3, 0.2, 0.1, 9.0],
])


def test_full_ranking_exact_ranks_and_padding_mask_excluded():
    fn = matrix_score_fn(SCORES)
    ranks = full_ranking_ranks(fn, np.array([0, 1, 2]), np.array([2, 1, 5]), 5, progress=False)
    # user 0 target 2 (0.5): only item 4 (0.9) is higher; pad and mask (9.0) do not count.
    # user 1 target 1 (0.4): tied with items 2, 3, 5 -> pessimistic rank 3.
    # user 2 target 5 (0.1): last of 5.
    assert ranks.dtype == np.int64
    assert ranks.tolist() == [1, 3, 4]
    assert fn.calls[0][1] is None


def test_full_ranking_tie_policies():
    args = (np.array([1]), np.array([1]), 5)
    fn = matrix_score_fn(SCORES)
    assert full_ranking_ranks(fn, *args, ties="optimistic", progress=False).tolist() == [0]
    avg = full_ranking_ranks(fn, *args, ties="average", progress=False)
    assert avg.dtype == np.float64 and avg.tolist() == [1.5]


def test_full_ranking_exclusion_of_seen_items():
    fn = matrix_score_fn(SCORES)
    # user 0: excluding item 4 (the only higher one) -> rank 0; 0 (padding) in the list is fine.
    # user 1: excluding 2 and 3 of the tied items, and the target itself (no effect) -> rank 1.
    # user 2: nothing excluded.
    exclude = [np.array([4, 0]), np.array([2, 3, 1]), np.array([], dtype=np.int64)]
    ranks = full_ranking_ranks(fn, np.array([0, 1, 2]), np.array([2, 1, 5]), 5,
                               exclude=exclude, progress=False)
    assert ranks.tolist() == [0, 1, 4]


def test_full_ranking_chunking_identical():
    rng = np.random.default_rng(0)
    users_n, n_items = 37, 50
    # Rounded scores so that ties occur.
    matrix = torch.from_numpy(np.round(rng.random((users_n, n_items + 2)), 1))
    users = rng.permutation(users_n)
    targets = rng.integers(1, n_items + 1, users_n)
    exclude = [rng.integers(0, n_items + 1, rng.integers(0, 10)) for _ in range(users_n)]
    fn = matrix_score_fn(matrix)
    small = full_ranking_ranks(fn, users, targets, n_items, batch_size=2, exclude=exclude,
                               progress=False)
    assert max(len(u) for u, _ in fn.calls) == 2
    large = full_ranking_ranks(fn, users, targets, n_items, batch_size=1000, exclude=exclude,
                               progress=False)
    np.testing.assert_array_equal(small, large)
    # Against a plain per-user reference.
    for i, (u, t) in enumerate(zip(users, targets)):
        row = matrix[u].numpy()
        cand = np.setdiff1d(np.arange(1, n_items + 1), np.append(exclude[i], t))
        assert small[i] == int((row[cand] >= row[t]).sum())


def test_full_ranking_input_errors():
    fn = matrix_score_fn(SCORES)
    with pytest.raises(LlmesrError, match="outside 1..5"):
        full_ranking_ranks(fn, np.array([0]), np.array([6]), 5, progress=False)
    with pytest.raises(LlmesrError, match="outside 0..5"):
        full_ranking_ranks(fn, np.array([0]), np.array([1]), 5, exclude=[np.array([7])],
                           progress=False)
    with pytest.raises(ValueError, match="score_fn returned"):
        full_ranking_ranks(fn, np.array([0]), np.array([1]), 7, progress=False)


def test_full_ranking_empty():
    fn = matrix_score_fn(SCORES)
    out = full_ranking_ranks(fn, np.array([], dtype=np.int64), np.array([], dtype=np.int64), 5,
                             progress=False)
    assert out.shape == (0,) and out.dtype == np.int64 and not fn.calls


# ------------------------------------------------------------------------------------------------
# sampled negatives


def random_cases(seed: int, n: int, n_items: int, max_len: int = 40):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, n)
    histories = [rng.integers(1, n_items + 1, k) for k in lengths]
    targets = np.array([h[-1] for h in histories])
    return np.arange(n), targets, histories


def assert_admissible(neg, valid, targets, histories, n_items):
    """No padding, target, history item or repeat among the valid negatives (vectorised)."""
    n, width = neg.shape
    rows = np.repeat(np.arange(n), width)[valid.ravel()]
    keys = rows * (n_items + 1) + neg.ravel()[valid.ravel()]
    assert len(np.unique(keys)) == len(keys), "repeated negative"
    assert (neg[valid] >= 1).all() and (neg[valid] <= n_items).all()
    lengths = [len(h) for h in histories]
    hist_keys = np.repeat(np.arange(n), lengths) * (n_items + 1) + np.concatenate(histories)
    assert not np.isin(keys, hist_keys).any(), "history item sampled"
    assert not np.isin(keys, np.arange(n) * (n_items + 1) + targets).any(), "target sampled"


def test_sampled_negatives_respect_exclusions():
    n, n_items, n_neg = 3000, 1000, 100
    users, targets, histories = random_cases(1, n, n_items)
    # Every 10th user has seen most of the catalogue (~600 distinct of 1000), so the exact
    # sampler serves those rows and rejection sampling the others.
    rng = np.random.default_rng(11)
    for i in range(0, n, 10):
        histories[i] = np.concatenate([rng.integers(1, n_items + 1, 900), histories[i]])
    table = torch.randn(n, n_items + 1)
    fn = matrix_score_fn(table)
    ranks = sampled_ranks(fn, users, targets, n_items, histories, n_neg=n_neg,
                          rng=np.random.default_rng(5), batch_size=512, progress=False)
    assert ranks.dtype == np.int64 and ranks.shape == (n,)
    assert ranks.min() >= 0 and ranks.max() <= n_neg
    seen_users = torch.cat([u for u, _ in fn.calls]).numpy()
    cands = torch.cat([c for _, c in fn.calls]).numpy()
    np.testing.assert_array_equal(seen_users, users)
    np.testing.assert_array_equal(cands[:, 0], targets)
    assert_admissible(cands[:, 1:], np.ones((n, n_neg), dtype=bool), targets, histories,
                      n_items)
    # Ranks agree with a direct count on the recorded candidates.
    scores = table[users[:, None], torch.from_numpy(cands)].numpy()
    np.testing.assert_array_equal(ranks, (scores[:, 1:] >= scores[:, :1]).sum(1))


def test_top_up_rounds_and_dense_subchunks(monkeypatch):
    # Force many short rounds in the rejection sampler and tiny chunks in the exact one.
    monkeypatch.setattr(protocols, "OVERSAMPLE", 0.2)
    monkeypatch.setattr(protocols, "DENSE_CELLS", 5000)
    n, n_items = 500, 1000
    _, targets, histories = random_cases(6, n, n_items)
    rng = np.random.default_rng(12)
    for i in range(0, n, 7):
        histories[i] = np.concatenate([rng.integers(1, n_items + 1, 900), histories[i]])
    neg, valid = sample_negatives(targets, n_items, histories, n_neg=100,
                                  rng=np.random.default_rng(0))
    assert valid.all()
    assert_admissible(neg, valid, targets, histories, n_items)
    # Still uniform: over the rejection-sampled rows each id is drawn about equally often.
    plain = np.setdiff1d(np.arange(n), np.arange(0, n, 7))
    counts = np.bincount(neg[plain].ravel(), minlength=n_items + 1)[1:]
    expected = len(plain) * 100 / n_items
    assert abs(counts.mean() - expected) < 1 and counts.std() < 2 * np.sqrt(expected)


def test_sample_negatives_matches_driver_and_is_uniform():
    users, targets, histories = random_cases(2, 50, 300)
    neg, valid = sample_negatives(targets, 300, histories, n_neg=20, rng=fixed_rng(3, "test"))
    assert valid.all()
    fn = matrix_score_fn(torch.randn(50, 301))
    sampled_ranks(fn, users, targets, 300, histories, n_neg=20, rng=fixed_rng(3, "test"),
                  batch_size=7, progress=False)
    np.testing.assert_array_equal(torch.cat([c for _, c in fn.calls]).numpy()[:, 1:], neg)
    # Uniform over admissible ids: 9 of 11 admissible (3 is the target, 7 seen), 5 drawn -> each
    # admissible id in 5/9 of the draws.
    reps = 4000
    neg, _ = sample_negatives(np.full(reps, 3), 11, [np.array([7])] * reps, n_neg=5,
                              rng=np.random.default_rng(0))
    freq = np.bincount(neg.ravel(), minlength=12) / reps
    assert freq[0] == freq[3] == freq[7] == 0
    np.testing.assert_allclose(np.delete(freq, [0, 3, 7]), 5 / 9, atol=0.03)


def test_sampled_reproducible_and_batch_size_independent():
    users, targets, histories = random_cases(3, 300, 1000)
    fn = matrix_score_fn(torch.randn(300, 1001))

    def run(rng, batch_size=64):
        return sampled_ranks(fn, users, targets, 1000, histories, n_neg=100, rng=rng,
                             batch_size=batch_size, progress=False)

    a = run(fixed_rng(42, "valid"))
    np.testing.assert_array_equal(a, run(fixed_rng(42, "valid"), batch_size=1))
    assert not np.array_equal(a, run(fixed_rng(43, "valid")))
    assert not np.array_equal(a, run(fixed_rng(42, "test")))
    # A generator that is carried on (the paper's redraw at every evaluation) draws anew.
    rng = np.random.default_rng(0)
    assert not np.array_equal(run(rng), run(rng))


def test_fixed_rng_is_stable_across_calls():
    a = fixed_rng(7, "test").integers(0, 1 << 30, 4)
    b = fixed_rng(7, "test").integers(0, 1 << 30, 4)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(LlmesrError):
        fixed_rng(-1, "test")


def test_tiny_catalogue_after_exclusion():
    # N = 8. Case 0: history excludes 5 ids + target -> 2 left. Case 1: nothing left.
    # Case 2: N < n_neg without exclusions -> 7 left.
    targets = np.array([1, 2, 3])
    histories = [np.array([2, 3, 4, 5, 6, 6]), np.array([1, 3, 4, 5, 6, 7, 8]), np.array([0])]
    neg, valid = sample_negatives(targets, 8, histories, n_neg=10, rng=np.random.default_rng(0))
    assert valid.sum(1).tolist() == [2, 0, 7]
    assert sorted(neg[0, valid[0]].tolist()) == [7, 8]
    assert sorted(neg[2, valid[2]].tolist()) == [1, 2, 4, 5, 6, 7, 8]
    assert (neg[~valid] == 0).all()

    # Scores: the target scores 0.5, item 8 scores 1.0, everything else 0; padding 2.0 is ignored.
    row = torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    matrix = row.repeat(3, 1)
    matrix[torch.arange(3), torch.from_numpy(targets)] = 0.5
    ranks = sampled_ranks(matrix_score_fn(matrix), np.arange(3), targets, 8, histories,
                          n_neg=10, rng=np.random.default_rng(0), progress=False)
    assert ranks.tolist() == [1, 0, 1]


def test_sampled_ties_pessimistic_by_default():
    fn = matrix_score_fn(torch.zeros(4, 201))
    users, targets, histories = random_cases(4, 4, 200)
    ranks = sampled_ranks(fn, users, targets, 200, histories, rng=np.random.default_rng(0),
                          progress=False)
    assert ranks.tolist() == [100] * 4
    avg = sampled_ranks(fn, users, targets, 200, histories, rng=np.random.default_rng(0),
                        ties="average", progress=False)
    assert avg.dtype == np.float64 and avg.tolist() == [50.0] * 4


def test_sampled_input_errors():
    fn = matrix_score_fn(torch.zeros(1, 11))
    with pytest.raises(LlmesrError, match="outside 0..10"):
        sampled_ranks(fn, np.array([0]), np.array([1]), 10, [np.array([11])],
                      rng=np.random.default_rng(0), progress=False)
    with pytest.raises(LlmesrError, match="negatives"):
        sampled_ranks(fn, np.array([0]), np.array([1]), 10, [np.array([2])], n_neg=0,
                      rng=np.random.default_rng(0), progress=False)
    with pytest.raises(ValueError, match="histories"):
        sampled_ranks(fn, np.array([0]), np.array([1]), 10, [], rng=np.random.default_rng(0),
                      progress=False)


def test_sampled_speed():
    n, n_items = 20_000, 12_000
    users, targets, histories = random_cases(5, n, n_items, max_len=60)

    # The sampler alone: vectorised, no Python loop per draw.
    start = time.perf_counter()
    _, valid = sample_negatives(targets, n_items, histories, n_neg=100,
                                rng=np.random.default_rng(0))
    elapsed = time.perf_counter() - start
    assert valid.all()
    assert elapsed < 1.0, f"sample_negatives took {elapsed:.2f} s"

    # End to end with a trivial model. One torch thread: on a shared runner whose cores are all
    # busy, every multi-threaded op on these small (1024, 101) blocks waits a scheduler tick
    # (~8 ms) for its second thread, which would measure the machine, not this code.
    item_scores = torch.randn(n_items + 1)

    def score_fn(user_rows, candidates):
        return item_scores[candidates]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        ranks = sampled_ranks(score_fn, users, targets, n_items, histories,
                              rng=np.random.default_rng(0), progress=False)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert ranks.shape == (n,)
    assert elapsed < 2.0, f"sampled_ranks took {elapsed:.2f} s"


# ------------------------------------------------------------------------------------------------
# groups


def test_group_metrics_counts_and_values():
    ranks = np.array([0, 1, 4, 12, 50])
    tail_user = np.array([True, True, False, False, True])
    tail_item = np.array([False, True, False, True, True])
    out = group_metrics(ranks, tail_user, tail_item, ks=(5, 10))
    assert out["counts"] == {"overall": 5, "tail_item": 3, "head_item": 2,
                             "tail_user": 3, "head_user": 2}
    assert out["overall"]["HR@5"] == pytest.approx(3 / 5)
    assert out["tail_item"]["HR@5"] == pytest.approx(1 / 3)        # ranks 1, 12, 50
    assert out["tail_item"]["NDCG@5"] == pytest.approx(1 / math.log2(3) / 3)
    assert out["head_item"]["HR@10"] == 1.0                          # ranks 0, 4
    assert out["head_item"]["NDCG@10"] == pytest.approx((1 + 1 / math.log2(6)) / 2)
    assert out["tail_user"]["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 51) / 3)
    assert out["head_user"]["MRR"] == pytest.approx((1 / 5 + 1 / 13) / 2)
    assert out["head_user"]["count"] == 2


def test_group_metrics_empty_group_is_nan():
    out = group_metrics(np.array([0, 3]), np.array([True, True]), np.array([False, False]))
    assert out["counts"]["head_user"] == 0 and out["counts"]["tail_item"] == 0
    assert math.isnan(out["head_user"]["HR@10"]) and math.isnan(out["tail_item"]["NDCG@10"])
    assert out["tail_user"]["HR@10"] == 1.0


def test_group_metrics_rejects_non_bool_masks():
    with pytest.raises(ValueError):
        group_metrics(np.array([0, 1]), np.array([1, 0]), np.array([True, False]))
    with pytest.raises(ValueError):
        group_metrics(np.array([0, 1]), np.array([True]), np.array([True, False]))


def test_full_ranking_topk_lists_the_best_items_with_the_target():
    # 2 users, items 1..5 (column 0 padding, column 6 a mask token)
    m = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0, 2.0, 99.0],
                      [9.0, 2.0, float("nan"), 7.0, 1.0, 6.0, 99.0]])
    fn = matrix_score_fn(m)
    ranks, top = full_ranking_ranks(fn, np.array([0, 1]), np.array([4, 3]), 5,
                                    progress=False, topk=3)
    assert ranks.tolist() == [1, 1]           # item 2 beats 4; the NaN ties with 3 (pessimistic)
    assert top.tolist() == [[2, 4, 3], [3, 5, 1]]   # padding, mask and NaN never listed
    # seen items leave the list; the target stays on it even when seen
    _, top = full_ranking_ranks(fn, np.array([0, 1]), np.array([4, 3]), 5, progress=False,
                                topk=2, exclude=[np.array([2, 4]), np.array([3])])
    assert top.tolist() == [[4, 3], [3, 5]]
    # fewer admissible items than topk: the slots past them hold 0, never an excluded item
    _, top = full_ranking_ranks(fn, np.array([0, 1]), np.array([4, 3]), 5, progress=False,
                                topk=4, exclude=[np.array([1, 2, 5]), np.array([1, 4, 5])])
    assert top.tolist() == [[4, 3, 0, 0], [3, 0, 0, 0]]     # (user 2's item 2 is NaN)
    assert np.array_equal(full_ranking_ranks(fn, np.array([0, 1]), np.array([4, 3]), 5,
                                             progress=False), ranks)
    with pytest.raises(LlmesrError, match="topk"):
        full_ranking_ranks(fn, np.array([0]), np.array([4]), 5, progress=False, topk=6)
