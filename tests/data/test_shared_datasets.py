"""The named datasets on the real files in ../shared/data (marked; missing data fails)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from llmesr.data.artifact import load_dataset
from llmesr.data.pipeline import prepare

pytestmark = pytest.mark.shared_data


def _prepare(name, shared_data, tmp_path):
    folder = {"llmesr-yelp": "llmesr-paper-splits", "llmesr-fashion": "llmesr-paper-splits"}
    src = shared_data / folder.get(name, name)
    t0 = time.perf_counter()
    manifest = prepare(name, tmp_path / name, source=src, log=lambda *a: None)
    return manifest, load_dataset(tmp_path / name, verify=True), time.perf_counter() - t0


def test_beauty_s3rec(shared_data, tmp_path):
    m, ds, seconds = _prepare("beauty-s3rec", shared_data, tmp_path)
    assert (ds.num_users, ds.num_items, len(ds.items)) == (22363, 12101, 198502)
    assert seconds < 10.0, f"preparing beauty-s3rec took {seconds:.1f} s"
    items = ds.item_table
    # ids are S3-Rec's own: item k of Beauty.txt is item k here
    assert (items["raw_id"].astype(int) == items["item_id"]).all()
    first_line = (shared_data / "beauty-s3rec" / "Beauty.txt").read_text().split("\n", 1)[0]
    assert ds.sequence(1).tolist() == [int(t) for t in first_line.split()[1:]]
    # every item has its entry in item_short_text.txt; the source gives one of them no words
    assert items["raw_key"].notna().all() and items["title"].notna().all()
    empty = items.loc[items["title"] == "", "raw_key"].tolist()
    assert empty == ["B001LTVF7G"]
    assert items.loc[0, "title"] == "nail lacquer simmer and shimmer"
    assert m["counts"]["min_length"] == 5 and m["counts"]["max_length"] == 204
    assert ds.users["raw_id"].iloc[0] == "A1YJEY40YUW4SE"


def test_yelp_s3rec(shared_data, tmp_path):
    m, ds, _ = _prepare("yelp-s3rec", shared_data, tmp_path)
    assert (ds.num_users, ds.num_items, len(ds.items)) == (30431, 20033, 316354)
    items = ds.item_table
    assert (items["title"].str.len() > 0).all() and (items["description"].str.len() > 0).all()
    assert items.loc[0, "title"] == "The Great Greek"
    assert m["text"]["items_without_text"] == 0


def test_llmesr_yelp_groups(shared_data, tmp_path):
    m, ds, _ = _prepare("llmesr-yelp", shared_data, tmp_path)
    assert (ds.num_users, ds.num_items, len(ds.items)) == (15720, 11383, 192214)
    g = m["groups"]
    assert (g["ts_user"], g["ts_item"]) == (12, 13)
    assert (g["tail_user"], g["head_user"]) == (12461, 3259)
    assert (g["tail_item"], g["head_item"]) == (3576, 12144)
    assert m["counts"]["repeated_pairs"] == 1


def test_llmesr_fashion_groups(shared_data, tmp_path):
    m, ds, _ = _prepare("llmesr-fashion", shared_data, tmp_path)
    assert (ds.num_users, ds.num_items, len(ds.items)) == (9094, 4722, 34759)
    g = m["groups"]
    assert (g["tail_user"], g["head_user"]) == (5135, 3959)
    assert (g["tail_item"], g["head_item"]) == (2591, 6503)
    assert m["counts"]["repeated_pairs"] == 4460
    # the paper's popularity counts an item repeated in one sequence once: 158 items differ
    raw_counts = np.bincount(ds.items, minlength=ds.num_items + 1)[1:]
    assert int((raw_counts != ds.item_table["popularity"].to_numpy()).sum()) == 158


def test_ml_100k_chronological(shared_data, tmp_path):
    m, ds, _ = _prepare("ml-100k", shared_data, tmp_path)
    assert (ds.num_users, ds.num_items, len(ds.items)) == (943, 1682, 100000)
    ts = ds.timestamps
    lengths = ds.lengths
    same_user = np.repeat(np.arange(ds.num_users), lengths)
    # non-decreasing within every user's history
    assert np.all((np.diff(ts) >= 0) | (np.diff(same_user) != 0))
    assert m["order_applied"] == "timestamp"
    assert m["text"]["items_without_text"] == 0
