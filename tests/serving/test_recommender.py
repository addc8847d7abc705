"""Recommender: load a run directory, recommend for raw-id histories, add items by text."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from llmesr.errors import LlmesrError
from llmesr.semantic.encoders import HashingEncoder
from llmesr.serving import Recommender
from llmesr.serving.recommender import ColdStartUnavailable, ItemExistsError
from tests.serving.conftest import raw_history, train

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def rec(trained_run):
    return Recommender.load(trained_run)


def test_the_run_directory_alone_serves(trained_run, beauty_subset, tmp_path, ds):
    assert (trained_run / "bundle" / "manifest.json").is_file()
    moved = shutil.copytree(trained_run, tmp_path / "elsewhere")
    history = raw_history(ds, 5, 4)
    hidden = beauty_subset.with_name("ds-hidden")
    beauty_subset.rename(hidden)        # the dataset is gone: the bundle is enough
    try:
        r = Recommender.load(moved)
        out = r.recommend(history, k=5)
    finally:
        hidden.rename(beauty_subset)
    assert len(out.ids) == 5 and out.fallback is None
    assert r.describe()["items"] == ds.num_items


def test_recommend_returns_raw_ids_scores_and_titles(rec, ds):
    history = raw_history(ds, 3, 6)
    out = rec.recommend(history, k=20)
    assert len(out.ids) == 20 and len(set(out.ids)) == 20
    assert out.scores == sorted(out.scores, reverse=True)
    titles = dict(zip(ds.item_table["raw_id"], ds.item_table["title"]))
    assert all(titles[i] == t for i, t in zip(out.ids, out.titles))
    assert not set(out.ids) & set(history)              # exclude_seen by default
    assert out.used == len(history) and out.unknown == []
    with_seen = rec.recommend(history, k=rec.num_items, exclude_seen=False)
    assert set(history) <= set(with_seen.ids)
    assert len(with_seen.ids) == rec.num_items          # k is capped at the catalogue


def test_scores_match_the_trainers_full_ranking(rec, ds, trained_run):
    """The served model ranks each test target exactly where training's evaluation did."""
    users = ds.users
    rows = np.flatnonzero(users["evaluated"].to_numpy())[:200]
    histories = [raw_history(ds, int(u) + 1, int(users["length"].iloc[u]) - 1) for u in rows]
    raw = ds.item_table["raw_id"].to_numpy()
    targets = raw[users["test_item"].to_numpy()[rows] - 1].tolist()
    saved = np.load(trained_run / "ranks_test_full.npy")[:200]
    # the run ranked without the history (exclude_seen=auto: beauty has no repeats)
    assert json.loads((trained_run / "metrics.json").read_text())["evaluation"]["exclude_seen"]
    served = rec.ranks(histories, targets, exclude_seen=True)
    # equal, but where the served scores put another item within float rounding of the
    # target (the products run over other batches, so a near-tie may fall either way)
    off = np.flatnonzero(served != saved)
    assert len(off) <= 2, (off, served[off], saved[off])
    for i in off:
        mapped = rec._map(histories[i])[0]
        with torch.no_grad():
            s = rec._score_rows([mapped])[0].double()
        j = rec.model_id(targets[i])
        near = (s - s[j]).abs() <= 1e-5 * max(1.0, float(s[j].abs()))
        near[[k for k in mapped if k != j] + [j]] = False
        assert abs(int(served[i]) - int(saved[i])) <= int(near.sum()), i
    assert np.all(rec.ranks(histories, targets) >= served)


def test_unknown_ids_are_reported_and_skipped(rec, ds):
    history = raw_history(ds, 7, 5)
    mixed = ["NOT-AN-ITEM", *history[:2], 12345678, *history[2:]]
    out, clean = rec.recommend(mixed, k=10), rec.recommend(history, k=10)
    assert out.unknown == ["NOT-AN-ITEM", "12345678"]
    assert out.ids == clean.ids and out.scores == pytest.approx(clean.scores)


def test_batch_equals_one_by_one(rec, ds):
    histories = [raw_history(ds, u, n) for u, n in ((1, 3), (2, 40), (9, 1), (20, 7))]
    batch = rec.recommend_batch(histories, k=[5, 10, 3, 8], exclude_seen=[True, False, True,
                                                                          False])
    for h, k, ex, b in zip(histories, (5, 10, 3, 8), (True, False, True, False), batch):
        one = rec.recommend(h, k=k, exclude_seen=ex)
        assert b.ids == one.ids and b.scores == pytest.approx(one.scores, abs=1e-5)


def test_no_known_item_falls_back_to_popularity(rec, ds):
    pop = ds.item_table.sort_values("popularity", ascending=False, kind="stable")
    for history in ([], ["nope", "nothing"]):
        out = rec.recommend(history, k=5)
        assert out.fallback == "popularity" and out.used == 0
        assert out.scores == sorted(out.scores, reverse=True)
        assert out.scores[0] == pop["popularity"].iloc[0]


def test_bad_arguments_are_clear_errors(rec):
    for bad in (dict(k=0), dict(k=-3), dict(k=2.5), dict(k=True)):
        with pytest.raises(LlmesrError, match="k must be a positive integer"):
            rec.recommend(["x"], **bad)
    with pytest.raises(LlmesrError, match="not one string"):
        rec.recommend("abc")
    with pytest.raises(LlmesrError, match="strings"):
        rec.recommend([1.5])
    with pytest.raises(KeyError):
        rec.item("nope")


def test_added_item_gets_the_trained_adapter_and_the_pca_projection(run_copy, ds):
    """A new item whose text equals a trained item's text lands on that item's semantic
    embedding, and its collaborative row is the PCA projection that initialised training."""
    r = Recommender.load(run_copy)
    row = ds.item_table.iloc[10]
    r.add_items([{"id": "NEW-A", "title": row["title"]}])
    j_new, j_old = r._index["NEW-A"], int(row["item_id"])
    assert j_new == ds.num_items + 2            # after the mask token
    with torch.no_grad():
        se = r.model.se(torch.tensor([j_new, j_old]))
        co_new = r.model.co(torch.tensor([j_new]))[0].numpy()
    torch.testing.assert_close(se[0], se[1])
    emb_dir = next(p for p in (ds.path / "semantic").iterdir() if (p / "manifest.json").is_file())
    init = np.load(emb_dir / "items_pca.npy")[j_old - 1]
    np.testing.assert_allclose(co_new, init, rtol=1e-4, atol=1e-5)
    info = r.item("NEW-A")
    assert info["added"] and info["title"] == row["title"] and info["popularity"] == 0


def test_added_items_are_recommended_persisted_and_usable_in_histories(run_copy, ds):
    r = Recommender.load(run_copy)
    history = raw_history(ds, 4, 5)
    before = r.recommend(history, k=r.num_items)
    titles = ["lavender body wash", "matte red lipstick"]
    assert r.add_items([{"id": "NEW-1", "title": titles[0]}, {"id": 99999977, "title": titles[1]}]
                       ) == ["NEW-1", "99999977"]
    assert r.num_items == ds.num_items + 2 and r.num_added == 2
    after = r.recommend(history, k=r.num_items)
    assert {"NEW-1", "99999977"} <= set(after.ids)               # recommendable without training
    assert len(after.ids) == len(before.ids) + 2
    with_new = r.recommend([*history, "NEW-1"], k=10)
    assert with_new.unknown == [] and with_new.used == len(history) + 1
    again = Recommender.load(run_copy)                     # saved with the run
    assert again.num_added == 2 and again.item("99999977")["title"] == titles[1]
    assert again.recommend(history, k=30).ids == r.recommend(history, k=30).ids
    assert json.loads((run_copy / "added_items" / "manifest.json").read_text())["items"] == 2


def test_add_items_validates_everything_first_and_loses_nothing(run_copy, ds, monkeypatch):
    r = Recommender.load(run_copy)
    r.add_items([{"id": "KEEP", "title": "kept item"}])
    trained = ds.item_table["raw_id"].iloc[0]
    cases = [
        ([{"id": trained, "title": "x"}], ItemExistsError, "already exists"),
        ([{"id": "KEEP", "title": "x"}], ItemExistsError, "already exists"),
        ([{"id": "D", "title": "x"}, {"id": "D", "title": "y"}], ItemExistsError, "already"),
        ([{"id": "B", "brand": "x"}], LlmesrError, "unknown field"),
        ([{"id": "C"}], LlmesrError, "has no text"),
        ([{"title": "no id"}], LlmesrError, "'id' is missing"),
        ([{"id": "E", "embedding": [0.1] * 5}], LlmesrError, "128 dimensions"),
        ([{"id": "F", "embedding": [float("nan")] * 128}], LlmesrError, "non-finite"),
        ([{"id": "G", "text": ""}], LlmesrError, "non-empty"),
        (["not a dict"], LlmesrError, "an object"),
        ([], LlmesrError, "no items"),
    ]
    for items, err, msg in cases:
        with pytest.raises(err, match=msg):
            r.add_items(items)
    with pytest.raises(LlmesrError, match="collaborative must be"):
        r.add_items([{"id": "H", "title": "x"}], collaborative="magic")
    # a failure while saving leaves both the run directory and the served catalogue as they were
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(LlmesrError, match="cannot save the added items.*disk full"):
        r.add_items([{"id": "LOST", "title": "never saved"}])
    monkeypatch.undo()
    assert "LOST" not in r and r.num_added == 1
    assert Recommender.load(run_copy).num_added == 1


def test_embedding_vectors_and_other_collaborative_rules(run_copy):
    r = Recommender.load(run_copy)
    vec = HashingEncoder(dim=128).encode(["rose water face mist"])[0]
    r.add_items([{"id": "V", "embedding": vec.tolist()}], collaborative="zero")
    r.add_items([{"id": "M", "text": "rose water face mist"}], collaborative="mapped")
    with torch.no_grad():
        se = r.model.se(torch.tensor([r._index["V"], r._index["M"]]))
        co = r.model.co(torch.tensor([r._index["V"], r._index["M"]]))
    torch.testing.assert_close(se[0], se[1])           # same text, same semantic embedding
    assert float(co[0].abs().sum()) == 0.0 and float(co[1].abs().sum()) > 0


def test_id_model_cannot_add_items(beauty_subset, tmp_path):
    r = Recommender.load(train(beauty_subset, tmp_path / "id", model="id", epochs=1))
    assert len(r.recommend(["x"], k=3).ids) == 3
    with pytest.raises(ColdStartUnavailable, match="ID-only"):
        r.add_items([{"id": "N", "title": "x"}])


def test_broken_run_files_are_clear_errors(run_copy, beauty_subset, tmp_path):
    Recommender.load(run_copy).add_items([{"id": "N", "title": "x"}])
    (run_copy / "added_items" / "llm.npy").write_bytes(b"garbage")
    with pytest.raises(LlmesrError, match="added_items is corrupt"):
        Recommender.load(run_copy)
    shutil.rmtree(run_copy / "added_items")
    (run_copy / "bundle" / "items.parquet").write_bytes(b"garbage")
    with pytest.raises(LlmesrError, match="missing or corrupt"):
        Recommender.load(run_copy)
    # a run without a bundle (trained before bundles) gets one from its dataset
    shutil.rmtree(run_copy / "bundle")
    assert Recommender.load(run_copy).num_items > 0
    shutil.rmtree(run_copy / "bundle")
    with pytest.raises(LlmesrError, match="dataset is not at"):
        Recommender.load(run_copy, data_dir=tmp_path / "nowhere")
    (run_copy / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LlmesrError, match="corrupt"):
        Recommender.load(run_copy)
    with pytest.raises(LlmesrError, match="not a run directory"):
        Recommender.load(tmp_path / "nowhere")


def test_new_item_slots_make_room_for_added_items(run_copy, ds):
    r = Recommender.load(run_copy)
    history = raw_history(ds, 6, 5)
    plain = r.recommend(history, k=10)
    assert r.recommend(history, k=10, new_item_slots=3).ids == plain.ids   # nothing added yet
    titles = ["vanilla body lotion", "pink nail polish", "tea tree shampoo", "argan hair oil"]
    r.add_items([{"id": f"S{i}", "title": t} for i, t in enumerate(titles)],
                collaborative="neighbors")
    full = r.recommend(history, k=r.num_items)
    best_added = [i for i in full.ids if i.startswith("S")]
    for slots in (1, 2, 4):
        out = r.recommend(history, k=10, new_item_slots=slots)
        added = [i for i in out.ids if i.startswith("S")]
        assert added == best_added[:slots]                       # the best added items
        trained = [i for i in out.ids if not i.startswith("S")]
        assert trained == [i for i in full.ids if not i.startswith("S")][:10 - slots]
        assert out.scores == sorted(out.scores, reverse=True) and len(out.ids) == 10
        assert out.scores == pytest.approx([full.scores[full.ids.index(i)] for i in out.ids])
    for bad in (-1, 11, 1.5):
        with pytest.raises(LlmesrError, match="new_item_slots"):
            r.recommend(history, k=10, new_item_slots=bad)


def test_neighbors_rule_is_the_similarity_weighted_mean_of_the_closest_trained_items(run_copy):
    r = Recommender.load(run_copy)
    vec = HashingEncoder(dim=128).encode(["rose water face mist"])[0]
    r.add_items([{"id": "NB", "embedding": vec.tolist()}], collaborative="neighbors")
    n = r.num_trained
    with torch.no_grad():
        llm = r.model.se.llm[1:n + 1].numpy()
        co = r.model.co.all()[1:n + 1].numpy()
        got = r.model.co(torch.tensor([r.model_id("NB")]))[0].numpy()
    sims = (llm / np.linalg.norm(llm, axis=1, keepdims=True)) @ (vec / np.linalg.norm(vec))
    top = np.argsort(-sims, kind="stable")[:10]
    w = np.clip(sims[top], 1e-6, None)
    np.testing.assert_allclose(got, (w[:, None] * co[top]).sum(0) / w.sum(), rtol=1e-4,
                               atol=1e-5)
