"""The dataset artifact: contents, atomic writing, loading and corruption checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmesr.data.artifact import load_dataset
from llmesr.data.pipeline import prepare
from llmesr.errors import LlmesrError
from tests.conftest import write


@pytest.fixture()
def table_files(tmp_path):
    rows = ["user_id,item_id,ts"]
    # three users; u1: 4 items, u2: 3 items, u3: 2 items
    for u, items in {"u1": "abcd", "u2": "bca", "u3": "ab"}.items():
        rows += [f"{u},{it},{k}" for k, it in enumerate(items)]
    inter = write(tmp_path / "inter.csv", "\n".join(rows) + "\n")
    items = write(tmp_path / "items.csv", "item_id,title\na,Apple\nb,Banana\nc,Cherry\nd,\n")
    return inter, items


def _prep(files, out, overwrite=False, **kw):
    inter, items = files
    return prepare("table", out, source=inter, items=items,
                   reader_options={"time_col": "ts"},
                   settings={"kcore_user": 0, "kcore_item": 0, "min_history": 0, **kw},
                   longtail={"ts_user": 3, "ts_item": 3}, overwrite=overwrite,
                   log=lambda *a: None)


def test_artifact_contents(tmp_path, table_files):
    m = _prep(table_files, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds", verify=True)
    assert ds.num_users == 3 and ds.num_items == 4 and len(ds.items) == 9
    assert ds.sequence(1).tolist() == [1, 2, 3, 4]
    users = ds.users
    assert users["valid_item"].tolist() == [3, 3, 0]
    assert users["test_item"].tolist() == [4, 1, 2]       # u3 (n = 2) keeps the paper policy
    assert users["test_history_len"].tolist() == [3, 2, 1]
    assert users["tail_user"].tolist() == [False, True, True]
    items = ds.item_table
    assert items["raw_id"].tolist() == ["a", "b", "c", "d"]
    assert items["popularity"].tolist() == [3, 3, 2, 1]
    assert m["groups"]["tail_item"] == 1 and m["groups"]["tail_user"] == 2
    assert m["text"]["items_without_text"] == 1
    assert m["counts"]["users_under_3"] == 1
    assert m["sources"][0]["sha256"] and len(m["files"]) >= 5
    assert m["prepare"]["kcore_user"] == 0 and m["longtail"]["ts_user"] == 3
    assert ds.timestamps.tolist()[:4] == [0, 1, 2, 3]
    assert ds.has_repeats is False


def test_has_repeats(tmp_path):
    # u2 has b twice; b once in each of u1 and u3 is no repeat
    rows = ["user_id,item_id,ts"] + [f"{u},{it},{k}" for u, items in
                                     {"u1": "ab", "u2": "bcb", "u3": "b"}.items()
                                     for k, it in enumerate(items)]
    inter = write(tmp_path / "inter.csv", "\n".join(rows) + "\n")
    items = write(tmp_path / "items.csv", "item_id,title\na,A\nb,B\nc,C\n")
    _prep((inter, items), tmp_path / "ds")
    assert load_dataset(tmp_path / "ds").has_repeats is True


def test_no_eval_policy_zeroes_targets(tmp_path, table_files):
    m = _prep(table_files, tmp_path / "ds", short_users="no_eval")
    ds = load_dataset(tmp_path / "ds")
    assert ds.users["evaluated"].tolist() == [True, True, False]
    assert ds.users["test_item"].tolist() == [4, 1, 0]
    assert m["groups"]["test_cases"] == 2


def test_existing_output_is_kept_without_overwrite(tmp_path, table_files):
    _prep(table_files, tmp_path / "ds")
    before = (tmp_path / "ds" / "manifest.json").read_text()
    with pytest.raises(LlmesrError, match="already exists"):
        _prep(table_files, tmp_path / "ds")
    assert (tmp_path / "ds" / "manifest.json").read_text() == before


def test_failed_prepare_leaves_nothing(tmp_path, table_files):
    with pytest.raises(LlmesrError):
        _prep(table_files, tmp_path / "ds", min_history=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inter.csv", "items.csv"]


def test_failed_overwrite_keeps_previous_artifact(tmp_path, table_files):
    _prep(table_files, tmp_path / "ds")
    with pytest.raises(LlmesrError):
        _prep(table_files, tmp_path / "ds", overwrite=True, min_history=10)
    assert load_dataset(tmp_path / "ds").num_users == 3


def test_load_detects_corruption(tmp_path, table_files):
    _prep(table_files, tmp_path / "ds")
    np.save(tmp_path / "ds" / "seq_items.npy", np.array([1, 2, 3], dtype=np.int32))
    with pytest.raises(LlmesrError, match="checksum"):
        load_dataset(tmp_path / "ds", verify=True)
    with pytest.raises(LlmesrError, match="do not match the manifest"):
        load_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "manifest.json").write_text("{not json")
    with pytest.raises(LlmesrError, match="corrupt"):
        load_dataset(tmp_path / "ds")
    with pytest.raises(LlmesrError, match="no manifest.json"):
        load_dataset(tmp_path)


def test_mixed_type_item_fields_are_stored(tmp_path):
    inter = write(tmp_path / "i.csv", "user_id,item_id\nu,a\nu,b\nu,c\n")
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(r) for r in [
        {"item_id": "a", "title": "A", "tags": ["x", "y"], "price": 3},
        {"item_id": "b", "title": "B", "tags": None, "price": "$4"},
        {"item_id": "c", "title": None, "tags": [], "price": None}]) + "\n")
    prepare("table", tmp_path / "ds", source=inter, items=items,
            reader_options={"text_fields": "title,tags"},
            settings=dict(kcore_user=0, kcore_item=0, min_history=0), log=lambda *a: None)
    table = pd.read_parquet(tmp_path / "ds" / "items.parquet")
    assert table["title"].tolist()[:2] == ["A", "B"]
    assert list(table["tags"][0]) == ["x", "y"]
