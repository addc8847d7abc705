"""Tests for the RecBole atomic-file reader."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from llmesr.data.readers.recbole import read_recbole
from llmesr.errors import DataFormatError, LlmesrError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "196\t242\t3\t881250949\n"
         "186\t302\t3.5\t891717742.9\n"
         "\n"
         "22\t377\t1\t878887116\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n"
        "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
        "377\tCafé \"Heavyweights\"\t\tChildren's Comedy\n")


def _write(folder: Path, name: str = "ml", inter: str | None = INTER,
           item: str | None = ITEM) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if inter is not None:
        (folder / f"{name}.inter").write_text(inter, encoding="utf-8")
    if item is not None:
        (folder / f"{name}.item").write_text(item, encoding="utf-8")
    return folder


def test_interactions_exact(tmp_path: Path) -> None:
    folder = _write(tmp_path / "ml")
    raw = read_recbole(folder)
    inter = raw.interactions
    assert list(inter.columns) == ["user", "item", "timestamp", "rating"]
    assert inter["user"].tolist() == ["196", "186", "22"]
    assert inter["item"].tolist() == ["242", "302", "377"]
    assert inter["timestamp"].tolist() == [881250949, 891717742, 878887116]
    assert inter["rating"].tolist() == [3.0, 3.5, 1.0]
    assert inter["timestamp"].dtype == "int64"
    assert inter["rating"].dtype == "float64"
    assert pd.api.types.is_string_dtype(inter["user"])
    assert pd.api.types.is_string_dtype(inter["item"])
    assert raw.reader == "recbole"
    assert raw.sources == [folder / "ml.inter", folder / "ml.item"]
    assert raw.options == {"user_field": "user_id", "item_field": "item_id",
                           "time_field": "timestamp", "rating_field": "rating",
                           "text_fields": ["movie_title", "release_year", "class"], "sep": "\t"}
    raw.validate()


def test_items_exact(tmp_path: Path) -> None:
    raw = read_recbole(_write(tmp_path / "ml"))
    assert raw.text_fields == ["movie_title", "release_year", "class"]
    assert list(raw.items.columns) == ["item", "movie_title", "release_year", "class"]
    assert raw.items.to_dict("records") == [
        {"item": "242", "movie_title": "Kolya", "release_year": "1996", "class": "Comedy"},
        {"item": "302", "movie_title": "L.A. Confidential", "release_year": "1997",
         "class": "Crime Film-Noir Mystery Thriller"},
        {"item": "377", "movie_title": 'Café "Heavyweights"', "release_year": None,
         "class": "Children's Comedy"},
    ]


def test_inter_file_source_and_default_text_skips_floats(tmp_path: Path) -> None:
    item = ("item_id:token\ttitle:token_seq\tprice:float\tvec:float_seq\tbrand:token\n"
            "242\tA thing\t9.5\t1 2\tAcme\n")
    folder = _write(tmp_path / "x", name="shop", item=item)
    raw = read_recbole(folder / "shop.inter")
    assert raw.sources == [folder / "shop.inter", folder / "shop.item"]
    assert raw.text_fields == ["title", "brand"]
    assert raw.items.to_dict("records") == [
        {"item": "242", "title": "A thing", "price": "9.5", "vec": "1 2", "brand": "Acme"}]


def test_text_fields_option(tmp_path: Path) -> None:
    folder = _write(tmp_path / "ml")
    assert read_recbole(folder, text_fields="movie_title, class").text_fields == \
        ["movie_title", "class"]
    assert read_recbole(folder, text_fields=["class"]).options["text_fields"] == ["class"]
    with pytest.raises(LlmesrError, match=r"\['genre'\].*columns: \['movie_title'"):
        read_recbole(folder, text_fields="genre")


def test_no_item_file_gives_empty_items(tmp_path: Path) -> None:
    folder = _write(tmp_path / "ml", item=None)
    (folder / "ml.user").write_text("user_id:token\tage:token\n196\t49\n", encoding="utf-8")
    raw = read_recbole(folder)
    assert raw.items.columns.tolist() == ["item"]
    assert len(raw.items) == 0
    assert raw.text_fields == []
    assert raw.sources == [folder / "ml.inter"]
    with pytest.raises(LlmesrError, match="no .item file"):
        read_recbole(folder, text_fields="movie_title")


def test_explicit_items_path(tmp_path: Path) -> None:
    folder = _write(tmp_path / "ml", item=None)
    (tmp_path / "other.item").write_text(ITEM, encoding="utf-8")
    raw = read_recbole(folder, tmp_path / "other.item")
    assert raw.items["item"].tolist() == ["242", "302", "377"]
    with pytest.raises(LlmesrError, match="missing.item"):
        read_recbole(folder, tmp_path / "missing.item")


def test_custom_fields_and_optional_columns(tmp_path: Path) -> None:
    inter = "uid:token\tiid:token\tts:float\treview:token_seq\n" \
            "u1\ti1\t1500000000.75\tgood stuff\nu2\ti1\t1400000000\tmeh\n"
    item = "iid:token\tname:token_seq\ni1\tWidget\n"
    folder = _write(tmp_path / "c", name="c", inter=inter, item=item)
    raw = read_recbole(folder, user_field="uid", item_field="iid", time_field="ts")
    assert list(raw.interactions.columns) == ["user", "item", "timestamp"]
    assert raw.interactions["timestamp"].tolist() == [1500000000, 1400000000]
    assert raw.options["rating_field"] is None
    assert raw.items.to_dict("records") == [{"item": "i1", "name": "Widget"}]
    # no timestamps at all
    raw = read_recbole(folder, user_field="uid", item_field="iid", time_field="")
    assert list(raw.interactions.columns) == ["user", "item"]
    # a non-default field that does not exist is an error, not silently dropped
    with pytest.raises(DataFormatError, match=r"'stamp'.*\['uid', 'iid', 'ts', 'review'\]"):
        read_recbole(folder, user_field="uid", item_field="iid", time_field="stamp")


def test_comma_separator(tmp_path: Path) -> None:
    folder = _write(tmp_path / "s", inter=INTER.replace("\t", ","), item=None)
    raw = read_recbole(folder, sep=",")
    assert raw.interactions["item"].tolist() == ["242", "302", "377"]
    assert raw.options["sep"] == ","
    tab = _write(tmp_path / "t", item=None)
    assert read_recbole(tab, sep="\\t").options["sep"] == "\t"


def test_folder_must_hold_exactly_one_inter(tmp_path: Path) -> None:
    folder = _write(tmp_path / "two")
    _write(folder, name="other", item=None)
    with pytest.raises(LlmesrError, match=r"found: ml\.inter, other\.inter"):
        read_recbole(folder)
    with pytest.raises(LlmesrError, match="found: none"):
        read_recbole(_write(tmp_path / "zero", inter=None))
    with pytest.raises(LlmesrError, match="nope.inter"):
        read_recbole(tmp_path / "nope.inter")


@pytest.mark.parametrize("header, message", [
    ("user_id\titem_id:token", "'user_id' has no type"),
    ("user_id:token\titem_id:int", "unknown type 'int'"),
    ("user_id:token\titem_id:token\tuser_id:float", "'user_id' twice"),
])
def test_bad_header(tmp_path: Path, header: str, message: str) -> None:
    folder = _write(tmp_path / "h", inter=f"{header}\n1\t2\n", item=None)
    with pytest.raises(DataFormatError) as exc:
        read_recbole(folder)
    assert "ml.inter:1: " in str(exc.value)
    assert message in str(exc.value)


def test_missing_user_or_item_field_lists_fields(tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", inter="uid:token\titem_id:token\n1\t2\n", item=None)
    with pytest.raises(DataFormatError, match=r"user field 'user_id'.*\['uid', 'item_id'\]"):
        read_recbole(folder)
    folder = _write(tmp_path / "n", item="iid:token\tname:token_seq\n2\tX\n")
    with pytest.raises(DataFormatError, match=r"ml\.item: no item field 'item_id'.*\['iid'"):
        read_recbole(folder)


@pytest.mark.parametrize("bad, message", [
    ("7\t8\t4", "expected 4 fields"),
    ("7\t8\t4\t100\textra", "expected 4 fields"),
    ("7 8 4 100", "expected 4 fields"),
    ("7\t8\tfour\t100", "field 'rating' is 'four'"),
    ("7\t8\t4\tlater", "field 'timestamp' is 'later'"),
    ("7\t8\t4\t", "field 'timestamp' is ''"),
    ("7\t8\tinf\t100", "field 'rating' is 'inf'"),
    ("\t8\t4\t100", "empty user id"),
    ("7\t \t4\t100", "empty item id"),
])
def test_malformed_inter_line_names_line(tmp_path: Path, bad: str, message: str) -> None:
    lines = INTER.splitlines()  # header, 2 rows, a blank line, 1 row
    folder = _write(tmp_path / "b", inter="\n".join([*lines[:3], "", bad, *lines[3:]]) + "\n")
    with pytest.raises(DataFormatError) as exc:
        read_recbole(folder)
    assert f"ml.inter:5: {message}" in str(exc.value)


def test_malformed_item_lines(tmp_path: Path) -> None:
    folder = _write(tmp_path / "i", item=ITEM + "999\tShort\n")
    with pytest.raises(DataFormatError, match=r"ml\.item:5: expected 4 fields"):
        read_recbole(folder)
    folder = _write(tmp_path / "j", item=ITEM + "\n242\tAgain\t2000\tDrama\n")
    with pytest.raises(DataFormatError, match=r"ml\.item:6: item '242' appears more than once"):
        read_recbole(folder)
    folder = _write(tmp_path / "k", inter="")
    with pytest.raises(DataFormatError, match=r"ml\.inter: file is empty"):
        read_recbole(folder)


def test_valid_files_use_the_vectorised_path(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import llmesr.data.readers.recbole as rb

    calls: list[int] = []
    real = rb.split_table_fast

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(rb, "split_table_fast", spy)
    read_recbole(_write(tmp_path / "v"))
    assert calls == [True, True]


@pytest.mark.shared_data
def test_real_ml100k() -> None:
    folder = SHARED_DATA / "ml-100k"
    assert (folder / "ml-100k.inter").is_file(), f"shared data missing: {folder}"
    assert (folder / "ml-100k.item").is_file(), f"shared data missing: {folder}"
    start = time.perf_counter()
    raw = read_recbole(folder)
    elapsed = time.perf_counter() - start
    raw.validate()
    inter = raw.interactions
    assert len(inter) == 100_000
    assert inter["user"].nunique() == 943
    assert inter["item"].nunique() == 1682
    assert len(raw.items) == 1682
    assert inter.iloc[0].tolist() == ["196", "242", 881250949, 3.0]
    assert inter["timestamp"].dtype == "int64"
    assert inter["rating"].dtype == "float64"
    assert sorted(inter["rating"].unique().tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert raw.text_fields == ["movie_title", "release_year", "class"]
    first = raw.items.iloc[0].to_dict()
    assert first == {"item": "1", "movie_title": "Toy Story", "release_year": "1995",
                     "class": "Animation Children's Comedy"}
    assert set(inter["item"]) == set(raw.items["item"])
    assert raw.sources == [folder / "ml-100k.inter", folder / "ml-100k.item"]
    assert elapsed < 2.0, f"reading ml-100k took {elapsed:.2f} s"
