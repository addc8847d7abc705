"""Popularity definitions, thresholds and group counts on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from llmesr.config import LongTailConfig
from llmesr.data.longtail import compute_groups, item_popularity, pareto_ts_item, pareto_ts_user
from llmesr.data.longtail import eval_history_lengths
from llmesr.errors import LlmesrError

# user 1: 1 2 1 3 (item 1 repeated), user 2: 2 3 4, user 3: 1 2
OFFSETS = np.array([0, 4, 7, 9])
ITEMS = np.array([1, 2, 1, 3, 2, 3, 4, 1, 2], dtype=np.int32)


def test_paper_popularity_counts_distinct_users_over_all_splits():
    pop = item_popularity(OFFSETS, ITEMS, 4, "paper")
    assert pop.tolist() == [0, 2, 3, 2, 1]


def test_train_popularity_excludes_valid_and_test_items():
    # train parts: user1 [1, 2], user2 [2], user3 (n = 2 < 3) [1, 2]
    pop = item_popularity(OFFSETS, ITEMS, 4, "train")
    assert pop.tolist() == [0, 2, 3, 0, 0]


def eval_history_lengths_are_capped():
    assert eval_history_lengths(np.array([1, 3, 300]), 200).tolist() == [0, 2, 200]


def test_pareto_user_threshold():
    # 10 users with history lengths 1..10: t = 9 gives 8/10 = 0.8 tail, t = 10 gives 0.9
    assert pareto_ts_user(np.arange(1, 11), 0.8) == 9


def test_pareto_item_threshold():
    # popularity mass 1+1+2+6+10 = 20; items with pop < 3 hold 4/20 = 0.2 (allowed),
    # pop < 7 would hold 10/20
    assert pareto_ts_item(np.array([1, 1, 2, 6, 10]), 0.8) == 6


def test_threshold_precedence_and_groups():
    evaluated = np.array([True, True, True])
    g = compute_groups(OFFSETS, ITEMS, 4, evaluated, LongTailConfig(ts_user=3), (9, 3))
    assert (g.ts_user, g.ts_item) == (3, 3)
    assert g.threshold_source == {"ts_user": "user", "ts_item": "paper"}
    targets = np.array([3, 4, 2])
    s = g.summary(targets, evaluated)
    # test history lengths 3, 2, 1 -> tail users (< 3): users 2 and 3
    assert (s["tail_user"], s["head_user"]) == (2, 1)
    # target pops 2, 1, 3 -> tail items (< 3): first two
    assert (s["tail_item"], s["head_item"]) == (2, 1)
    g2 = compute_groups(OFFSETS, ITEMS, 4, evaluated, LongTailConfig(), None)
    assert g2.threshold_source["ts_user"].startswith("pareto")


def test_bad_longtail_config():
    with pytest.raises(LlmesrError, match="popularity"):
        LongTailConfig(popularity="clicks").validate()
    with pytest.raises(LlmesrError, match="ts_user"):
        LongTailConfig(ts_user=0).validate()
    with pytest.raises(LlmesrError, match="max_len must be >= 1"):
        LongTailConfig(max_len=0).validate()
