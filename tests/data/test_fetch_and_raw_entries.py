"""Fetching MovieLens 100K (local HTTP server), --download, and the paper's raw-source recipes."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import zipfile

import pytest

from llmesr.cli import main
from llmesr.data.artifact import load_dataset
from llmesr.data.fetch import download_entry, movielens_100k
from llmesr.data.pipeline import prepare
from llmesr.data.registry import DatasetEntry
from llmesr.errors import LlmesrError
from tests.conftest import write

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]


@pytest.fixture()
def http_dir(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (base_url, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()
    thread.join()


def _ml100k_zip(path):
    data = "".join(f"{u}\t{i}\t{(u + i) % 5 + 1}\t{880000000 + 10 * i + u}\n"
                   for u in (1, 2, 3) for i in (1, 2, 3, 4))
    flags = "|".join("1" if g in ("Comedy", "Drama") else "0" for g in GENRES)
    items = "".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}\n" for i in range(1, 5))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", data)
        z.writestr("ml-100k/u.item", items.encode("latin-1"))
        z.writestr("ml-100k/README", "test")


def test_movielens_from_grouplens_style_server(http_dir, tmp_path, monkeypatch, capsys):
    base, www = http_dir
    _ml100k_zip(www / "ml-100k.zip")
    name, folder = movielens_100k(tmp_path / "cache", log=lambda *_: None,
                                  grouplens_url=f"{base}/ml-100k.zip", use_pip=False)
    assert name == "movielens-100k" and (folder / "u.data").is_file()
    # second call: served from the cache, no network
    (www / "ml-100k.zip").unlink()
    assert movielens_100k(tmp_path / "cache", log=lambda *_: None,
                          grouplens_url=f"{base}/ml-100k.zip", use_pip=False)[1] == folder
    # the demo runs on that copy
    code = main(["demo", "--source", str(folder), "--out", str(tmp_path / "demo"),
                 "--epochs", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "users        3" in out
    ds = load_dataset(tmp_path / "demo" / "ml-100k")
    assert ds.item_table["genres"].map(list).iloc[0] == ["Comedy", "Drama"]
    # it trained both models, printed the group table and saved the plot
    assert "| SASRec + LLM-ESR | full |" in out and "| SASRec | sampled |" in out
    # and recommended from the saved run, with a movie added by its title
    assert "serving (llmesr recommend / serve)" in out
    assert "Toy Story 4 (2019) at place" in out
    assert (tmp_path / "demo" / "groups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in ("run-id", "run-llmesr"):
        assert (tmp_path / "demo" / run / "metrics.json").is_file()


def test_movielens_all_sources_fail(http_dir, tmp_path, monkeypatch):
    base, _ = http_dir
    monkeypatch.setenv("LLMESR_DATA_ROOT", str(tmp_path / "nothing"))
    with pytest.raises(LlmesrError, match="could not get MovieLens 100K.*HTTP 404"):
        movielens_100k(tmp_path / "cache", log=lambda *_: None,
                       grouplens_url=f"{base}/missing.zip", use_pip=False)


def test_download_entry(http_dir, tmp_path):
    base, www = http_dir
    write(www / "reviews_X.json.gz", "x")
    entry = DatasetEntry(name="x", reader="amazon2014", summary="", urls=(
        f"{base}/reviews_X.json.gz",))
    folder = download_entry(entry, tmp_path / "cache")
    assert (folder / "reviews_X.json.gz").read_text() == "x"
    with pytest.raises(LlmesrError, match="cannot be downloaded automatically"):
        download_entry(DatasetEntry(name="y", reader="yelp", summary=""), tmp_path)


def _amazon2014_dump(folder):
    """Users u1..u5 review A..E; u6 reviews A..C and R (4 reviews); item R has 5 reviews, one by
    u6. A single pass over the raw counts drops u6 but keeps R with 4 interactions."""
    reviews, t = [], 1_300_000_000
    for u in ("u1", "u2", "u3", "u4", "u5"):
        for it in "ABCDE":
            t += 1
            reviews.append({"reviewerID": u, "asin": it, "overall": 5.0, "unixReviewTime": t})
    for it in "ABC":
        t += 1
        reviews.append({"reviewerID": "u6", "asin": it, "overall": 3.0, "unixReviewTime": t})
    for u in ("u6", "u1", "u2", "u3", "u4"):
        t += 1
        reviews.append({"reviewerID": u, "asin": "R", "overall": 4.0, "unixReviewTime": t})
    write(folder / "reviews_Beauty.json", "".join(json.dumps(r) + "\n" for r in reviews))
    meta = "".join(repr({"asin": a, "title": f"Item {a}", "brand": "B",
                         "categories": [["Beauty", "Skin"]]}) + "\n" for a in "ABCDER")
    write(folder / "meta_Beauty.json", meta)


def test_amazon2014_beauty_recipe(tmp_path):
    _amazon2014_dump(tmp_path / "raw")
    m = prepare("amazon2014-beauty", tmp_path / "ds", source=tmp_path / "raw",
                log=lambda *a: None)
    ds = load_dataset(tmp_path / "ds")
    assert (ds.num_users, ds.num_items, len(ds.items)) == (5, 6, 29)
    items = ds.item_table.set_index("raw_id")
    assert items.loc["R", "popularity"] == 4          # below the 5-core: a one-pass filter
    assert ds.item_table["raw_id"].tolist() == list("ABCDER")  # file order of first appearance
    assert (m["groups"]["ts_user"], m["groups"]["ts_item"]) == (9, 4)
    assert m["groups"]["threshold_source"] == {"ts_user": "paper", "ts_item": "paper"}
    assert m["prepare"]["kcore_mode"] == "single" and m["prepare"]["id_order"] == "file"
    assert items.loc["A", "title"] == "Item A"


def test_yelp_paper_recipe_date_window(tmp_path):
    raw = tmp_path / "yelp"
    rows, biz = [], {}
    dates = {u: [f"2005-0{k + 1}-0{d + 1} 10:00:00" for k in range(4)]
             for d, u in enumerate(["u1", "u2", "u3", "u4", "u5"])}
    outside = {"u1": "1999-12-31 23:00:00", "u2": "2020-01-01 00:00:00"}
    for u, ds_ in dates.items():
        for k, d in enumerate(ds_ + ([outside[u]] if u in outside else [])):
            b = f"b{k}"
            biz[b] = {"business_id": b, "name": f"Place {k}", "categories": "Food, Bars",
                      "city": "X", "state": "NV", "stars": 4.0, "review_count": 3, "is_open": 1}
            rows.append({"review_id": f"r{len(rows)}", "user_id": u, "business_id": b,
                         "stars": 4.0, "date": d})
    write(raw / "yelp_academic_dataset_review.json", "".join(json.dumps(r) + "\n" for r in rows))
    write(raw / "yelp_academic_dataset_business.json",
          "".join(json.dumps(b) + "\n" for b in biz.values()))
    m = prepare("yelp-paper", tmp_path / "ds", source=raw, log=lambda *a: None)
    steps = [s["step"] for s in m["filter_log"]]
    assert steps[1].startswith("date in [2000-01-01 00:00:00, 2019-12-31 00:00:00]")
    assert m["filter_log"][1]["interactions"] == 20     # the 1999 and 2020 reviews are gone
    assert (m["counts"]["users"], m["counts"]["items"]) == (5, 4)
    assert load_dataset(tmp_path / "ds").item_table["name"].tolist()[0] == "Place 0"
    assert (m["groups"]["ts_user"], m["groups"]["ts_item"]) == (12, 13)


def test_raw_entry_without_source_says_where_to_download(tmp_path, capsys):
    code = main(["prepare", "amazon2014-beauty", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "needs --source PATH" in err and "snap.stanford.edu" in err
