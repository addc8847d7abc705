"""Holding items out of a real dataset, and the cold-start evaluation on it."""

from __future__ import annotations

import numpy as np
import pytest

from llmesr.data.artifact import load_dataset
from llmesr.data.holdout import hold_out_items, load_held_out
from llmesr.errors import LlmesrError
from llmesr.semantic.encoders import HashingEncoder
from llmesr.semantic.pipeline import embed
from llmesr.serving.coldstart import evaluate_cold_start
from tests.serving.conftest import train

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def held(beauty_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("holdout") / "data"
    hold_out_items(beauty_subset, out, n=30, seed=3, log=lambda *a: None)
    return out


def test_held_out_items_are_gone_and_their_cases_kept(beauty_subset, held):
    src, ds = load_dataset(beauty_subset), load_dataset(held)
    items, cases = load_held_out(held)
    assert len(items) == 30 and ds.num_items == src.num_items - 30
    assert not set(items["raw_id"]) & set(ds.item_table["raw_id"])
    raw = src.item_table["raw_id"].to_numpy()
    users = src.users
    is_case = users["evaluated"] & users["test_item"].isin(items["item_id"])
    assert len(cases) == int(is_case.sum()) > 0
    for u, row in zip(np.flatnonzero(is_case.to_numpy()), cases.itertuples()):
        full = raw[src.sequence(int(u) + 1) - 1].tolist()
        assert list(row.history) == full[:-1] and row.target == full[-1]
    # every other interaction is kept, in order
    kept = raw[src.items - 1][~np.isin(raw[src.items - 1], items["raw_id"])]
    np.testing.assert_array_equal(ds.item_table["raw_id"].to_numpy()[ds.items - 1], kept)
    assert ds.manifest["held_out"]["test_cases"] == len(cases)
    assert ds.manifest["groups"]["ts_item"] == src.manifest["groups"]["ts_item"]
    with pytest.raises(LlmesrError, match="can hold out"):
        hold_out_items(beauty_subset, held.parent / "x", n=10 ** 6)


def test_cold_start_evaluation(held, tmp_path):
    embed(held, encoder=HashingEncoder(dim=128), pca_dim=64, neighbors=20, progress=False,
          log=lambda *a: None)
    run = train(held, tmp_path / "run", epochs=1)
    r = evaluate_cold_start(run, held, methods=("pca", "zero"), slots=(1,))
    assert r["before_adding"]["HR@10"] == 0.0 and r["held_out_items"] == 30
    for m in ("pca", "zero"):
        res = r["methods"][m]
        assert 0 <= res["HR@10"] <= res["HR@100"] <= 1
        assert 1 <= res["median_rank_among_added"] <= 30
        # one slot out of ten for 30 new items: the hit rate can only go up
        assert res["new_item_slots=1"]["HR@10"] >= res["HR@10"]
    # a run trained on the full dataset knows the held-out items: not a cold-start check
    src = load_dataset(held).manifest["derived_from"]["path"]
    with pytest.raises(LlmesrError, match="already knows"):
        evaluate_cold_start(train(src, tmp_path / "full", epochs=1), held, methods=("pca",),
                            slots=())
