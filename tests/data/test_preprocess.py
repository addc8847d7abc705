"""Filtering, ordering, ids and split on hand-made interactions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmesr.config import PrepareConfig
from llmesr.data.preprocess import preprocess
from llmesr.data.types import RawData, empty_items
from llmesr.errors import EmptyResultError, LlmesrError

NONE = dict(kcore_user=0, kcore_item=0, min_history=0)


def raw(rows, items=None, fields=()):
    cols = ["user", "item", "timestamp", "rating"][: len(rows[0])]
    df = pd.DataFrame(rows, columns=cols)
    df["user"] = df["user"].astype(object)
    df["item"] = df["item"].astype(object)
    return RawData(interactions=df, items=items if items is not None else empty_items(),
                   text_fields=list(fields), sources=[], reader="test").validate()


def seqs(p):
    return [p.item_raw[p.items[p.offsets[u]:p.offsets[u + 1]] - 1].tolist()
            for u in range(p.num_users)]


def test_stable_chronological_order_and_paper_ids():
    r = raw([("b", "x", 5), ("a", "y", 3), ("b", "z", 5), ("a", "x", 1), ("b", "y", 2)])
    p = preprocess(r, PrepareConfig(**NONE))
    # users in first-appearance order: b then a; ties (x, z at t=5) keep file order
    assert p.user_raw.tolist() == ["b", "a"]
    assert seqs(p) == [["y", "x", "z"], ["x", "y"]]
    # items numbered walking users in order, histories in time order (the paper's id_map)
    assert p.item_raw.tolist() == ["y", "x", "z"]
    assert p.items.tolist() == [1, 2, 3, 2, 1]
    assert p.timestamps.tolist() == [2, 5, 5, 1, 3]


def test_file_order_and_id_orders():
    r = raw([("2", "30", 9), ("1", "10", 8), ("2", "20", 1)])
    p = preprocess(r, PrepareConfig(order="file", **NONE))
    assert seqs(p) == [["30", "20"], ["10"]]
    p = preprocess(r, PrepareConfig(order="file", id_order="source", **NONE))
    assert p.user_raw.tolist() == ["1", "2"] and p.item_raw.tolist() == ["10", "20", "30"]
    p = preprocess(r, PrepareConfig(id_order="file", **NONE))  # file order of items: 30, 10, 20
    assert p.item_raw.tolist() == ["30", "10", "20"]
    with pytest.raises(LlmesrError, match="numeric user ids"):
        preprocess(raw([("u", "1", 1)]), PrepareConfig(id_order="source", **NONE))


def test_rating_and_date_filters():
    day = 86400
    r = raw([("a", "x", 0, 1.0), ("a", "y", day, 4.0), ("a", "z", 3 * day, 5.0),
             ("b", "x", 2 * day, 5.0)])
    p = preprocess(r, PrepareConfig(min_rating=4, **NONE))
    assert p.num_users == 2 and len(p.items) == 3
    p = preprocess(r, PrepareConfig(date_start="1970-01-02", date_end="1970-01-03", **NONE))
    assert seqs(p) == [["y", "x"]] or seqs(p) == [["y"], ["x"]]
    assert len(p.items) == 2
    with pytest.raises(LlmesrError, match="no timestamps"):
        preprocess(raw([("a", "x")]), PrepareConfig(date_start="2000-01-01", **NONE))
    with pytest.raises(LlmesrError, match="not a date"):
        preprocess(r, PrepareConfig(date_start="yesterday-ish", **NONE))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(LlmesrError, match="min_rating must be a finite number"):
            preprocess(r, PrepareConfig(min_rating=bad, **NONE))


def test_duplicate_policies():
    r = raw([("a", "x", 1), ("a", "y", 2), ("a", "x", 3)])
    assert seqs(preprocess(r, PrepareConfig(**NONE))) == [["x", "y", "x"]]
    assert seqs(preprocess(r, PrepareConfig(duplicates="first", **NONE))) == [["x", "y"]]
    assert seqs(preprocess(r, PrepareConfig(duplicates="last", **NONE))) == [["y", "x"]]


def _kcore_data():
    # u1: a b c ; u2: a b ; u3: a c ; u4: d
    rows = [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "b"), ("u3", "a"),
            ("u3", "c"), ("u4", "d")]
    return raw(rows)


def test_kcore_single_pass_vs_iterative():
    r = _kcore_data()
    # single pass on the raw counts: users >= 2 -> drop u4; items >= 2 -> drop d (a=3,b=2,c=2)
    single = preprocess(r, PrepareConfig(kcore_user=2, kcore_item=2, kcore_mode="single",
                                         min_history=0))
    assert single.user_raw.tolist() == ["u1", "u2", "u3"]
    # with users >= 3 in one pass only u1 survives, and its items keep counts from the raw
    single3 = preprocess(r, PrepareConfig(kcore_user=3, kcore_item=2, kcore_mode="single",
                                          min_history=0))
    assert seqs(single3) == [["a", "b", "c"]]
    # iterated until stable the same thresholds leave nothing: the items of u1 fall below 2
    with pytest.raises(EmptyResultError, match="k-core"):
        preprocess(r, PrepareConfig(kcore_user=3, kcore_item=2, kcore_mode="iterative",
                                    min_history=0))


def test_min_history_after_single_pass():
    r = _kcore_data()
    p = preprocess(r, PrepareConfig(kcore_user=0, kcore_item=2, kcore_mode="single",
                                    min_history=3))
    assert p.user_raw.tolist() == ["u1"]
    assert [s["step"] for s in p.log] == ["read", "k-core single pass (users>=0, items>=2)",
                                          "min_history >= 3", "final"]


def test_short_user_policies():
    r = raw([("a", "x", 1), ("a", "y", 2), ("b", "x", 1), ("b", "y", 2), ("b", "z", 3)])
    keep = preprocess(r, PrepareConfig(**NONE))
    assert keep.evaluated.tolist() == [True, True]
    no_eval = preprocess(r, PrepareConfig(short_users="no_eval", **NONE))
    assert no_eval.evaluated.tolist() == [False, True] and no_eval.num_users == 2
    drop = preprocess(r, PrepareConfig(short_users="drop", **NONE))
    assert drop.user_raw.tolist() == ["b"] and drop.item_raw.tolist() == ["x", "y", "z"]


def test_item_table_alignment_and_missing_text():
    items = pd.DataFrame({"item": ["z", "x", "q"], "title": ["Zed", "Ex", "Queue"]},
                         dtype=object)
    r = raw([("a", "x", 1), ("a", "y", 2), ("a", "z", 3)], items=items, fields=["title"])
    p = preprocess(r, PrepareConfig(**NONE))
    assert p.item_table["raw_id"].tolist() == ["x", "y", "z"]
    assert p.item_table["title"].tolist() == ["Ex", None, "Zed"]
    assert p.item_table["item_id"].tolist() == [1, 2, 3]


def test_empty_after_filter_and_bad_setting():
    r = raw([("a", "x", 1, 1.0)])
    with pytest.raises(EmptyResultError, match="rating filter"):
        preprocess(r, PrepareConfig(min_rating=3, **NONE))
    with pytest.raises(LlmesrError, match="kcore_mode must be one of"):
        preprocess(r, PrepareConfig(kcore_mode="twice"))


def test_csr_layout():
    r = raw([("a", "x", 1), ("b", "y", 1), ("a", "y", 2)])
    p = preprocess(r, PrepareConfig(**NONE))
    assert p.offsets.tolist() == [0, 2, 3]
    assert p.items.dtype == np.int32 and p.offsets.dtype == np.int64
