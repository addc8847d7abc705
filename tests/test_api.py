"""The public Python API (llmesr.Dataset, llmesr.train, llmesr.load_run): the five-line path
on MovieLens 100K DataFrames, and the errors for bad frames and settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import llmesr
from llmesr import LlmesrError

# ---- the five-line path on real data ---------------------------------------------------------
# A part of MovieLens 100K keeps the test short on 2 cores: the 60 users with the smallest
# ids and the 200 movies they rated most. Embedding (the bundled encoder) and two epochs of
# LLM-ESR SASRec with max_len 20 then take a few seconds each.
USERS, MOVIES = 60, 200


def _recbole(path) -> pd.DataFrame:
    """A RecBole atomic file (typed header ``name:type``, tab-separated) as a DataFrame."""
    df = pd.read_csv(path, sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


@pytest.fixture(scope="module")
def frames(shared_data):
    src = shared_data / "ml-100k"
    inter = _recbole(src / "ml-100k.inter")
    inter = inter[inter["user_id"] <= USERS]
    top = inter["item_id"].value_counts().index[:MOVIES]
    inter = inter[inter["item_id"].isin(top)].reset_index(drop=True)
    items = _recbole(src / "ml-100k.item").rename(columns={"movie_title": "title",
                                                           "class": "genres"})
    return inter, items[items["item_id"].isin(top)].reset_index(drop=True)


@pytest.fixture(scope="module")
def five_lines(frames, tmp_path_factory):
    interactions, items = frames
    tmp = tmp_path_factory.mktemp("api")
    # -- the five lines of the README and the docs' Python API page --
    ds = llmesr.Dataset.from_frames(interactions, items, user="user_id", item="item_id",
                                    time="timestamp", text=["title", "genres"],
                                    out=tmp / "data", progress=False)
    ds.embed(progress=False)
    run = llmesr.train(ds, model="llmesr", backbone="sasrec", out=tmp / "run", epochs=2,
                       max_len=20, sd_teachers=3, progress=False)
    return ds, run, run.metrics(), run.recommend(["1", "7"], k=10)


@pytest.mark.shared_data
def test_five_line_path_on_movielens_frames(frames, five_lines):
    interactions, items = frames
    ds, run, metrics, top = five_lines
    # the dataset: every user kept (5-core of a dense part), histories in time order
    assert ds.num_users == interactions["user_id"].nunique()
    assert ds.manifest["reader"]["name"] == "frames"
    assert ds.manifest["text"]["fields"] == ["title", "genres"]
    assert ds.manifest["frames"]["interactions"]["rows"] == len(interactions)
    first = interactions[interactions["user_id"] == 1].sort_values("timestamp", kind="stable")
    assert ds.history(1) == first["item_id"].astype(str).tolist()
    assert len(ds.embeddings) == 1
    # the metrics frame: protocol x group rows, one column per metric, group sizes
    assert set(metrics.index.get_level_values("protocol")) == {"full", "sampled"}
    assert list(metrics.loc["full"].index) == ["overall", "tail_item", "head_item",
                                               "tail_user", "head_user"]
    assert {"HR@10", "NDCG@10", "MRR", "count"} <= set(metrics.columns)
    overall = metrics.loc[("full", "overall")]
    assert overall["count"] == ds.manifest["counts"]["evaluated_users"]
    assert 0.0 <= overall["NDCG@10"] <= overall["HR@10"] <= 1.0
    assert metrics.loc[("sampled", "overall"), "HR@10"] >= overall["HR@10"]
    # recommendations: raw ids, the history left out, titles from the items frame
    assert list(top.columns) == ["rank", "item_id", "score", "title"]
    assert len(top) == 10 and list(top["rank"]) == list(range(1, 11))
    assert not {"1", "7"} & set(top["item_id"])
    assert top["score"].is_monotonic_decreasing
    titles = dict(zip(items["item_id"].astype(str), items["title"]))
    assert all(titles[i] == t for i, t in zip(top["item_id"], top["title"]))
    assert top.attrs["unknown"] == [] and top.attrs["fallback"] is None


@pytest.mark.shared_data
def test_run_reloads_evaluates_and_recommends_in_batches(five_lines):
    ds, run, metrics, top = five_lines
    again = llmesr.load_run(run.path)
    pd.testing.assert_frame_equal(again.metrics(), metrics)
    assert again.config["configs"]["model"]["max_len"] == 20
    assert len(again.history()) == 2
    assert again.metrics("valid").index.get_level_values("protocol")[0] == "full"
    # evaluate() recomputes from the best weights: the same numbers
    pd.testing.assert_frame_equal(again.evaluate("full").loc[["full"]], metrics.loc[["full"]])
    # a batch: one frame with a user column; unknown ids reported, never mapped
    batch = again.recommend({"a": ["1", "7"], "b": ["nope"]}, k=5)
    assert list(batch.columns) == ["user", "rank", "item_id", "score", "title"]
    assert batch[batch["user"] == "a"]["item_id"].tolist() == top["item_id"][:5].tolist()
    assert batch.attrs["unknown"] == {"b": ["nope"]}
    assert batch.attrs["fallback"] == {"b": "popularity"}
    assert again.recommend([["1"], ["7"]], k=3)["user"].tolist() == [0, 0, 0, 1, 1, 1]
    assert llmesr.Dataset.load(ds.path, verify=True).num_items == ds.num_items


@pytest.mark.shared_data
def test_train_reads_a_yaml_config_and_keywords_override_it(five_lines, tmp_path):
    ds, *_ = five_lines
    cfg = tmp_path / "id.yaml"
    cfg.write_text("model: id\npreset: paper\nmax_len: 10\nepochs: 3\npatience: 1\n"
                   "train:\n  batch_size: 64\n")
    run = llmesr.train(ds.path, config=cfg, out=tmp_path / "run", epochs=1, progress=False)
    saved = run.config["configs"]
    assert saved["model"]["model"] == "id" and saved["model"]["max_len"] == 10
    assert saved["model"]["causal"] is False             # the paper preset
    assert saved["train"]["batch_size"] == 64 and saved["train"]["epochs"] == 1
    assert run.raw_metrics["epochs"] == 1
    # MELT from that id run (a Run object): stage 2 only, the id weights as its backbone
    melt = llmesr.train(ds.path, model="melt", preset="paper", init_from=run,
                        out=tmp_path / "melt",
                        max_len=10, melt_epochs=1, progress=False)
    assert melt.raw_metrics["melt"]["stage1"]["from_run"] == str(run.path)
    assert melt.raw_metrics["epochs"] == 1 and len(melt.recommend(["1", "7"], k=5)) == 5


# ---- errors ----------------------------------------------------------------------------------
def _toy(users: int = 12, per_user: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(20)}", 1_600_000_000 + 60 * k)
            for u in range(users) for k in range(per_user)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(20)],
                          "title": [f"movie {k}" for k in range(20)],
                          "genres": ["Drama"] * 20})
    return inter, items


_AS_IS = dict(kcore_user=0, kcore_item=0, min_history=0)


def test_frames_prepare_with_datetimes_and_keep_attributes(tmp_path):
    inter, items = _toy()
    inter["timestamp"] = pd.to_datetime(inter["timestamp"], unit="s")
    items["year"] = 1990
    ds = llmesr.Dataset.from_frames(inter, items, time="timestamp", out=tmp_path / "d",
                                    progress=False, **_AS_IS)
    assert ds.num_users == 12
    ts = np.load(tmp_path / "d" / "seq_timestamps.npy")
    assert ts.min() == 1_600_000_000                     # seconds, not nanoseconds
    assert ds.manifest["text"]["fields"] == ["title", "genres"]   # string columns only
    assert "year" in ds.items.columns


def test_frames_and_files_give_the_same_dataset(tmp_path):
    inter, items = _toy()
    inter.to_csv(tmp_path / "inter.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    a = llmesr.Dataset.from_frames(inter, items, time="timestamp", out=tmp_path / "a",
                                   progress=False, **_AS_IS, ts_user=4)
    b = llmesr.Dataset.prepare("table", tmp_path / "b", source=tmp_path / "inter.csv",
                               items=tmp_path / "items.csv", options={"time_col": "timestamp"},
                               progress=False, **_AS_IS, ts_user="4")   # strings as from a CLI
    for f in ("seq_offsets.npy", "seq_items.npy", "seq_timestamps.npy"):
        np.testing.assert_array_equal(np.load(a.path / f), np.load(b.path / f))
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert a.manifest["groups"] == b.manifest["groups"]
    assert a.manifest["groups"]["ts_user"] == 4


@pytest.mark.parametrize("change, message", [
    (lambda i, t: (i.drop(columns="user_id"), t), "missing column 'user_id' (the user column)"),
    (lambda i, t: (i, t.drop(columns="genres")), "missing column 'genres'"),
    (lambda i, t: (i.iloc[:0], t), "the interactions DataFrame has no rows"),
    (lambda i, t: (i, t.iloc[:0]), "the items DataFrame has no rows"),
    (lambda i, t: (i.assign(item_id=[None] + list(i["item_id"][1:])), t),
     "interactions DataFrame row 1: empty item id"),
    (lambda i, t: (i.assign(timestamp=["soon"] * len(i)), t), "cannot parse timestamp"),
    (lambda i, t: (pd.concat([i, i["user_id"]], axis=1), t), "column 'user_id'"),
    (lambda i, t: (i, pd.concat([t, t.iloc[:1]])), "item 'i0' appears twice"),
    (lambda i, t: ({"user_id": [1]}, t), "interactions must be a pandas DataFrame"),
    (lambda i, t: (i, "items.csv"), "items must be a pandas DataFrame"),
])
def test_bad_frames_are_clear_errors(tmp_path, change, message):
    inter, items = change(*_toy())
    with pytest.raises(LlmesrError, match=message.replace("(", r"\(").replace(")", r"\)")):
        llmesr.Dataset.from_frames(inter, items, time="timestamp", text=["title", "genres"],
                                   out=tmp_path / "d", progress=False, **_AS_IS)
    assert not (tmp_path / "d").exists()


def test_bad_settings_and_paths_are_clear_errors(tmp_path):
    inter, items = _toy()
    with pytest.raises(LlmesrError, match="unknown preparation setting 'kcore_usr'"):
        llmesr.Dataset.from_frames(inter, items, out=tmp_path / "d", kcore_usr=3)
    with pytest.raises(LlmesrError, match="text columns were given but no items"):
        llmesr.Dataset.from_frames(inter, out=tmp_path / "d", text=["title"])
    with pytest.raises(LlmesrError, match="nothing|no users|left"):   # 5-core of a toy log
        llmesr.Dataset.from_frames(inter, items, out=tmp_path / "d", progress=False,
                                   kcore_item=50)
    assert not (tmp_path / "d").exists()
    llmesr.Dataset.from_frames(inter, items, out=tmp_path / "d", progress=False, **_AS_IS)
    with pytest.raises(LlmesrError, match="already exists"):
        llmesr.Dataset.from_frames(inter, items, out=tmp_path / "d", progress=False)
    with pytest.raises(LlmesrError, match="not found|no manifest"):
        llmesr.Dataset.load(tmp_path / "nowhere")
    with pytest.raises(LlmesrError, match="not a run directory"):
        llmesr.load_run(tmp_path / "d")
    with pytest.raises(LlmesrError, match="unknown setting 'epochz'"):
        llmesr.train(tmp_path / "d", model="id", out=tmp_path / "run", epochz=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(LlmesrError, match="expected a mapping"):
        llmesr.train(tmp_path / "d", config=bad, out=tmp_path / "run")
    with pytest.raises(LlmesrError, match="settings file not found"):
        llmesr.train(tmp_path / "d", config=tmp_path / "none.yaml", out=tmp_path / "run")
