"""Tests for the Amazon 2014 / 2018 / 2023 readers, on small files in the documented formats."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmesr.data.readers.amazon import read_amazon2014, read_amazon2018, read_amazon2023
from llmesr.errors import DataFormatError, LlmesrError


def write_lines(path: Path, lines: list[str], gz: bool | None = None) -> Path:
    """Write text lines; gzip when ``gz`` is true (default: when the name ends in .gz)."""
    text = "".join(line + "\n" for line in lines)
    if gz is None:
        gz = path.name.endswith(".gz")
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def as_records(df: pd.DataFrame) -> list[dict]:
    return df.to_dict(orient="records")


# ============================================================================================
# 2014
# ============================================================================================

def review14(user: str, asin: str, t: int, overall: float = 5.0, **extra) -> str:
    rec = {"reviewerID": user, "asin": asin, "reviewerName": "J. Doe", "helpful": [2, 3],
           "reviewText": "I bought this for my daughter and she loves it.", "overall": overall,
           "summary": "Great tutu", "unixReviewTime": t, "reviewTime": "02 12, 2011"}
    rec.update(extra)
    return json.dumps(rec)


REVIEWS_2014 = [
    review14("A1", "0000031852", 1297468800, 5.0),
    review14("A2", "0000031852", 1358553600, 3.0),
    review14("A1", "B00004TUBL", 1252800000, 4.0),
    review14("A3", "B000NO_META", 1400000000, 1.0),
    review14("A2", "B00004TUBV", 1100000000, 2.0),
]

META_2014 = [
    # a full record (Python dict literal, as in the original files)
    "{'asin': '0000031852', 'title': 'Girls Ballet Tutu Zebra Hot Pink', 'price': 3.17, "
    "'imUrl': 'http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg', "
    "'related': {'also_bought': ['B00JHONN1S', 'B002BZX8Z6'], 'also_viewed': ['B002BZX8Z6']}, "
    "'salesRank': {'Toys & Games': 211836}, 'brand': 'Coxlures', "
    "'categories': [['Sports & Outdoors', 'Other Sports', 'Dance'], ['Clothing']], "
    "'description': \"It's a tutu.\"}",
    # an item nobody reviewed
    "{'asin': 'B00UNSEEN1', 'title': 'Unseen', 'categories': [['Beauty']]}",
    # an unreviewed item whose description quotes a reviewed asin: parsed, then dropped
    "{'description': \"like 'asin': 'B00004TUBL'\", 'asin': 'B00UNSEEN3', 'title': 'Decoy'}",
    # no title, no brand, no price (fields are simply missing)
    "{'asin': 'B00004TUBL', 'categories': [['Beauty', 'Skin Care', 'Face']], "
    "'description': 'Gentle cleanser'}",
    # a description that quotes an asin pair before the real key must not fool the pre-filter
    "{'description': \"see 'asin': 'B00UNSEEN1' for more\", 'asin': 'B00004TUBV', "
    "'title': 'Hair Oil', 'brand': 'Oily', 'price': 12.0, 'categories': [['Beauty', 'Hair']]}",
]


def make_2014(tmp_path: Path, gz: bool = True, cat: str = "Beauty") -> Path:
    ext = ".json.gz" if gz else ".json"
    write_lines(tmp_path / f"reviews_{cat}{ext}", REVIEWS_2014, gz)
    write_lines(tmp_path / f"meta_{cat}{ext}", META_2014, gz)
    return tmp_path


EXPECTED_ITEMS_2014 = [
    {"item": "0000031852", "title": "Girls Ballet Tutu Zebra Hot Pink", "brand": "Coxlures",
     "categories": [["Sports & Outdoors", "Other Sports", "Dance"], ["Clothing"]],
     "description": "It's a tutu.", "price": 3.17},
    {"item": "B00004TUBL", "title": None, "brand": None,
     "categories": [["Beauty", "Skin Care", "Face"]], "description": "Gentle cleanser",
     "price": None},
    {"item": "B00004TUBV", "title": "Hair Oil", "brand": "Oily",
     "categories": [["Beauty", "Hair"]], "description": "see 'asin': 'B00UNSEEN1' for more",
     "price": 12.0},
]


@pytest.mark.parametrize("gz", [True, False])
def test_2014_reads_reviews_and_meta(tmp_path: Path, gz: bool) -> None:
    make_2014(tmp_path, gz)
    ext = ".json.gz" if gz else ".json"
    raw = read_amazon2014(tmp_path / f"reviews_Beauty{ext}").validate()

    inter = raw.interactions
    assert list(inter.columns) == ["user", "item", "timestamp", "rating"]
    assert inter["user"].tolist() == ["A1", "A2", "A1", "A3", "A2"]
    assert inter["item"].tolist() == ["0000031852", "0000031852", "B00004TUBL", "B000NO_META",
                                      "B00004TUBV"]
    assert inter["timestamp"].tolist() == [1297468800, 1358553600, 1252800000, 1400000000,
                                           1100000000]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0, 1.0, 2.0]
    assert inter["timestamp"].dtype == np.int64
    assert inter["rating"].dtype == np.float64
    assert all(type(u) is str for u in inter["user"])

    assert list(raw.items.columns) == ["item", "title", "brand", "categories", "description",
                                       "price"]
    # meta-file order; the unreviewed item is dropped; the item without meta is absent
    assert as_records(raw.items) == EXPECTED_ITEMS_2014
    assert raw.items.loc[1, "title"] is None
    assert raw.text_fields == ["title", "brand", "categories", "description"]
    assert raw.sources == [tmp_path / f"reviews_Beauty{ext}", tmp_path / f"meta_Beauty{ext}"]
    assert raw.reader == "amazon2014"
    assert raw.options == {}


def test_2014_directory_discovery_and_explicit_items(tmp_path: Path) -> None:
    make_2014(tmp_path)
    raw = read_amazon2014(tmp_path).validate()
    assert raw.sources == [tmp_path / "reviews_Beauty.json.gz", tmp_path / "meta_Beauty.json.gz"]
    assert raw.interactions["user"].tolist() == ["A1", "A2", "A1", "A3", "A2"]
    assert as_records(raw.items) == EXPECTED_ITEMS_2014

    other = tmp_path / "elsewhere"
    other.mkdir()
    renamed = write_lines(other / "my_meta.txt", META_2014)
    raw2 = read_amazon2014(tmp_path / "reviews_Beauty.json.gz", renamed).validate()
    assert raw2.sources[1] == renamed
    assert as_records(raw2.items) == EXPECTED_ITEMS_2014


def test_2014_five_core_file_finds_full_meta(tmp_path: Path) -> None:
    write_lines(tmp_path / "reviews_Beauty_5.json.gz", REVIEWS_2014)
    write_lines(tmp_path / "meta_Beauty.json.gz", META_2014)
    raw = read_amazon2014(tmp_path).validate()
    assert raw.sources == [tmp_path / "reviews_Beauty_5.json.gz",
                           tmp_path / "meta_Beauty.json.gz"]
    assert len(raw.items) == 3


def test_2014_meta_in_strict_json_is_accepted(tmp_path: Path) -> None:
    write_lines(tmp_path / "reviews_Beauty.json.gz", REVIEWS_2014[:1])
    write_lines(tmp_path / "meta_Beauty.json.gz", [json.dumps(
        {"asin": "0000031852", "title": "Tutu", "categories": [["A", "B"]], "price": 1.5})])
    raw = read_amazon2014(tmp_path).validate()
    assert as_records(raw.items) == [{"item": "0000031852", "title": "Tutu", "brand": None,
                                      "categories": [["A", "B"]], "description": None,
                                      "price": 1.5}]


def test_2014_missing_meta_names_the_file_and_items_option(tmp_path: Path) -> None:
    write_lines(tmp_path / "reviews_Beauty.json.gz", REVIEWS_2014)
    with pytest.raises(LlmesrError) as e:
        read_amazon2014(tmp_path / "reviews_Beauty.json.gz")
    msg = str(e.value)
    assert "meta_Beauty.json.gz" in msg and "--items" in msg
    with pytest.raises(LlmesrError, match="meta_Beauty.json.gz"):
        read_amazon2014(tmp_path)


def test_2014_directory_without_or_with_several_reviews_files(tmp_path: Path) -> None:
    with pytest.raises(LlmesrError, match="no Amazon 2014 reviews file"):
        read_amazon2014(tmp_path)
    make_2014(tmp_path, cat="Beauty")
    make_2014(tmp_path, cat="Toys")
    with pytest.raises(LlmesrError, match="several"):
        read_amazon2014(tmp_path)


def test_2014_missing_source(tmp_path: Path) -> None:
    with pytest.raises(LlmesrError, match="not found"):
        read_amazon2014(tmp_path / "reviews_Nope.json.gz")


@pytest.mark.parametrize("bad_line, expected", [
    ('{"reviewerID": "A9", "asin": "X", "overall": 5.0, "unixReviewTime": 12',
     "neither a JSON object nor a Python dict literal"),
    (json.dumps({"asin": "X", "overall": 5.0, "unixReviewTime": 12}), "'reviewerID'"),
    (json.dumps({"reviewerID": "A9", "overall": 5.0, "unixReviewTime": 12}), "'asin'"),
    (json.dumps({"reviewerID": "A9", "asin": "X", "overall": 5.0}), "'unixReviewTime'"),
    (json.dumps({"reviewerID": "A9", "asin": "X", "overall": 5.0,
                 "unixReviewTime": "yesterday"}), "'unixReviewTime'"),
    (json.dumps({"reviewerID": "A9", "asin": "X", "overall": "five",
                 "unixReviewTime": 12}), "'overall'"),
    ('["A9", "X", 5.0, 12]', "expected a JSON object"),
])
def test_2014_malformed_review_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    lines = REVIEWS_2014[:2] + ["", bad_line] + REVIEWS_2014[2:]  # blank line 3, bad line 4
    write_lines(tmp_path / "reviews_Beauty.json.gz", lines)
    write_lines(tmp_path / "meta_Beauty.json.gz", META_2014)
    with pytest.raises(DataFormatError) as e:
        read_amazon2014(tmp_path)
    msg = str(e.value)
    assert "reviews_Beauty.json.gz:4:" in msg
    assert expected in msg


def test_2014_missing_key_message_names_the_key(tmp_path: Path) -> None:
    write_lines(tmp_path / "reviews_Beauty.json",
                [REVIEWS_2014[0], json.dumps({"asin": "X", "unixReviewTime": 1})])
    write_lines(tmp_path / "meta_Beauty.json", META_2014)
    with pytest.raises(DataFormatError) as e:
        read_amazon2014(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'reviews_Beauty.json'}:2: missing required key "
                            "'reviewerID'")


def test_2014_time_as_numeric_string_and_rating_missing(tmp_path: Path) -> None:
    write_lines(tmp_path / "reviews_Beauty.json.gz", [
        json.dumps({"reviewerID": "A1", "asin": "0000031852", "unixReviewTime": "1297468800"}),
        json.dumps({"reviewerID": "A2", "asin": "0000031852", "unixReviewTime": 1297468801,
                    "overall": 4}),
    ])
    write_lines(tmp_path / "meta_Beauty.json.gz", META_2014)
    raw = read_amazon2014(tmp_path).validate()
    assert raw.interactions["timestamp"].tolist() == [1297468800, 1297468801]
    ratings = raw.interactions["rating"].tolist()
    assert math.isnan(ratings[0]) and ratings[1] == 4.0


@pytest.mark.parametrize("bad_meta, expected", [
    ("{'asin': 'B00004TUBL', 'title': 'unterminated}", "neither a JSON object nor a Python"),
    ("{'asin': 'B00004TUBL', 'title': 'x',, }", "neither a JSON object nor a Python"),
    ("['B00004TUBL', 'title']", "expected a JSON object or Python dict"),
    ("{'title': 'no asin here', 'categories': []}", "missing required key 'asin'"),
])
def test_2014_malformed_meta_line(tmp_path: Path, bad_meta: str, expected: str) -> None:
    write_lines(tmp_path / "reviews_Beauty.json.gz", REVIEWS_2014)
    meta = META_2014[:2] + [bad_meta] + META_2014[2:]
    write_lines(tmp_path / "meta_Beauty.json.gz", meta)
    with pytest.raises(DataFormatError) as e:
        read_amazon2014(tmp_path)
    msg = str(e.value)
    assert "meta_Beauty.json.gz:3:" in msg
    assert expected in msg


@pytest.mark.parametrize("template", [
    # the dangerous call as a field value of a reviewed item
    "{{'asin': 'B00004TUBL', 'title': __import__('os').system('touch {marker}')}}",
    # a whole line that is a call, with no asin to pre-filter on
    "__import__('os').system('touch {marker}')",
    # an attribute lookup smuggled in a dict
    "{{'asin': 'B00004TUBL', 'title': ().__class__.__bases__[0].__subclasses__()}}",
])
def test_2014_meta_code_is_rejected_not_executed(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "hacked"
    write_lines(tmp_path / "reviews_Beauty.json.gz", REVIEWS_2014)
    meta = META_2014[:1] + [template.format(marker=marker)] + META_2014[1:]
    write_lines(tmp_path / "meta_Beauty.json.gz", meta)
    with pytest.raises(DataFormatError) as e:
        read_amazon2014(tmp_path)
    assert "meta_Beauty.json.gz:2:" in str(e.value)
    assert "neither a JSON object nor a Python dict literal" in str(e.value)
    assert not marker.exists()


def test_2014_meta_lines_of_unreviewed_items_are_skipped_unparsed(tmp_path: Path) -> None:
    marker = tmp_path / "hacked"
    write_lines(tmp_path / "reviews_Beauty.json.gz", REVIEWS_2014)
    meta = META_2014 + [f"{{'asin': 'B00UNSEEN2', 'x': __import__('os').system('touch {marker}')}}"]
    write_lines(tmp_path / "meta_Beauty.json.gz", meta)
    raw = read_amazon2014(tmp_path).validate()
    assert as_records(raw.items) == EXPECTED_ITEMS_2014
    assert not marker.exists()


# ============================================================================================
# 2018
# ============================================================================================

def review18(user: str, asin: str, t: int, overall: float) -> str:
    return json.dumps({"overall": overall, "verified": True, "reviewTime": "09 13, 2009",
                       "reviewerID": user, "asin": asin, "style": {"Size:": " Large"},
                       "reviewerName": "Jane", "reviewText": "Fits well.", "summary": "Nice",
                       "unixReviewTime": t, "vote": "2", "image": ["https://example/x.jpg"]})


def meta18(asin: str, **fields) -> str:
    rec = {"category": ["Clothing, Shoes & Jewelry", "Women"], "tech1": "",
           "description": ["A soft shirt.", "Machine wash."], "fit": "", "title": "Shirt",
           "also_buy": ["B0001"], "image": [], "tech2": "", "brand": "Acme", "feature": [
               "100% cotton", "Imported"], "rank": "1,234 in Clothing", "also_view": [],
           "main_cat": "AMAZON FASHION", "similar_item": "", "date": "June 1, 2010",
           "price": "$12.99", "asin": asin, "imageURL": [], "imageURLHighRes": [],
           "details": {"Shipping Weight:": "4 ounces"}}
    for k, v in fields.items():
        if v is ...:
            del rec[k]
        else:
            rec[k] = v
    return json.dumps(rec)


REVIEWS_2018 = [
    review18("U1", "B0002Z1JNK", 1252800000, 5.0),
    review18("U2", "B0003", 1262800000, 2.0),
    review18("U1", "B0004", 1272800000, 3.0),
]

META_2018 = [
    meta18("B0004", title="Scarf", price="", feature=...),  # no feature key, empty price
    meta18("B0002Z1JNK", title="Tee", brand="Hanes"),
    meta18("B0999", title="Not reviewed"),
    meta18("B0004", title="Scarf duplicate", price="$1.00"),  # duplicated asin: first wins
]

EXPECTED_ITEMS_2018 = [
    {"item": "B0004", "title": "Scarf", "brand": "Acme", "feature": None,
     "description": ["A soft shirt.", "Machine wash."], "price": "", "date": "June 1, 2010",
     "category": ["Clothing, Shoes & Jewelry", "Women"], "main_cat": "AMAZON FASHION"},
    {"item": "B0002Z1JNK", "title": "Tee", "brand": "Hanes", "feature": ["100% cotton", "Imported"],
     "description": ["A soft shirt.", "Machine wash."], "price": "$12.99",
     "date": "June 1, 2010", "category": ["Clothing, Shoes & Jewelry", "Women"],
     "main_cat": "AMAZON FASHION"},
]


@pytest.mark.parametrize("gz", [True, False])
def test_2018_reads_reviews_and_meta(tmp_path: Path, gz: bool) -> None:
    ext = ".json.gz" if gz else ".json"
    write_lines(tmp_path / f"AMAZON_FASHION{ext}", REVIEWS_2018, gz)
    write_lines(tmp_path / f"meta_AMAZON_FASHION{ext}", META_2018, gz)
    raw = read_amazon2018(tmp_path / f"AMAZON_FASHION{ext}").validate()
    inter = raw.interactions
    assert inter["user"].tolist() == ["U1", "U2", "U1"]
    assert inter["item"].tolist() == ["B0002Z1JNK", "B0003", "B0004"]
    assert inter["timestamp"].tolist() == [1252800000, 1262800000, 1272800000]
    assert inter["rating"].tolist() == [5.0, 2.0, 3.0]
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64
    assert list(raw.items.columns) == ["item", "title", "brand", "feature", "description",
                                       "price", "date", "category", "main_cat"]
    assert as_records(raw.items) == EXPECTED_ITEMS_2018
    assert raw.text_fields == ["title", "brand", "feature", "description", "category",
                               "main_cat"]
    assert raw.sources == [tmp_path / f"AMAZON_FASHION{ext}",
                           tmp_path / f"meta_AMAZON_FASHION{ext}"]
    assert raw.reader == "amazon2018"
    assert raw.options == {}


def test_2018_directory_discovery_five_core(tmp_path: Path) -> None:
    write_lines(tmp_path / "AMAZON_FASHION_5.json.gz", REVIEWS_2018)
    write_lines(tmp_path / "meta_AMAZON_FASHION.json.gz", META_2018)
    raw = read_amazon2018(tmp_path).validate()
    assert raw.sources == [tmp_path / "AMAZON_FASHION_5.json.gz",
                           tmp_path / "meta_AMAZON_FASHION.json.gz"]
    assert as_records(raw.items) == EXPECTED_ITEMS_2018

    write_lines(tmp_path / "AMAZON_FASHION.json.gz", REVIEWS_2018)
    with pytest.raises(LlmesrError, match="several"):
        read_amazon2018(tmp_path)


def test_2018_missing_meta_and_meta_as_source(tmp_path: Path) -> None:
    write_lines(tmp_path / "Beauty.json.gz", REVIEWS_2018)
    with pytest.raises(LlmesrError) as e:
        read_amazon2018(tmp_path)
    assert "meta_Beauty.json.gz" in str(e.value) and "--items" in str(e.value)

    meta = write_lines(tmp_path / "meta_Beauty.json.gz", META_2018)
    with pytest.raises(LlmesrError, match="looks like a metadata file"):
        read_amazon2018(meta)


def test_2018_malformed_lines(tmp_path: Path) -> None:
    write_lines(tmp_path / "Beauty.json", REVIEWS_2018[:1] + [json.dumps(
        {"overall": 5.0, "reviewerID": "U9", "unixReviewTime": 1})])
    write_lines(tmp_path / "meta_Beauty.json", META_2018)
    with pytest.raises(DataFormatError) as e:
        read_amazon2018(tmp_path)
    assert str(e.value) == f"{tmp_path / 'Beauty.json'}:2: missing required key 'asin'"

    # 2018 meta is strict JSON: a Python literal is a format error there
    write_lines(tmp_path / "Beauty.json", REVIEWS_2018)
    write_lines(tmp_path / "meta_Beauty.json",
                META_2018[:1] + ["{'asin': 'B0002Z1JNK', 'title': 'Tee'}"])
    with pytest.raises(DataFormatError) as e:
        read_amazon2018(tmp_path)
    assert f"{tmp_path / 'meta_Beauty.json'}:2: not a valid JSON line" in str(e.value)


# ============================================================================================
# 2023
# ============================================================================================

def review23(user: str, asin: str, parent: str, ts_ms: int, rating: float) -> str:
    return json.dumps({"rating": rating, "title": "Such a lovely scent", "text": "Smells great",
                       "images": [], "asin": asin, "parent_asin": parent, "user_id": user,
                       "timestamp": ts_ms, "helpful_vote": 0, "verified_purchase": True})


def meta23(parent: str, **fields) -> str:
    rec = {"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner",
           "average_rating": 4.8, "rating_number": 10, "features": ["Soft", "8 oz"],
           "description": ["Conditions leather."], "price": None, "images": [], "videos": [],
           "store": "Howard Products", "categories": [],
           "details": {"Package Dimensions": "7.1 x 5.5 x 3 inches", "UPC": "617390882781"},
           "parent_asin": parent, "bought_together": None}
    for k, v in fields.items():
        if v is ...:
            del rec[k]
        else:
            rec[k] = v
    return json.dumps(rec)


REVIEWS_2023 = [
    review23("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO", "B00YQ6X8EO", 1588687728923, 5.0),
    review23("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B081TJ8YS3", "P1", 1588615855070, 4.0),
    review23("AE74DYR3QUGVPZJ3P7RFWBGIX7XQ", "B081TJ8YS4", "P1", 1589665266052, 1.0),
    review23("AE74DYR3QUGVPZJ3P7RFWBGIX7XQ", "B081TJ8YS3", "P1", 1643393630220, 3.0),
]

META_2023 = [
    meta23("P1", title="Lip Gloss", price=9.99, categories=["Beauty", "Makeup", "Lips"]),
    meta23("B00YQ6X8EO", store=..., details={}),
    meta23("PX", title="not reviewed"),
]

DETAILS = json.dumps({"Package Dimensions": "7.1 x 5.5 x 3 inches", "UPC": "617390882781"},
                     ensure_ascii=False)

EXPECTED_P1 = {"title": "Lip Gloss", "store": "Howard Products", "features": ["Soft", "8 oz"],
               "description": ["Conditions leather."],
               "categories": ["Beauty", "Makeup", "Lips"], "main_category": "All Beauty",
               "price": 9.99, "details": DETAILS}
EXPECTED_B00 = {"title": "Howard LC0008 Leather Conditioner", "store": None,
                "features": ["Soft", "8 oz"], "description": ["Conditions leather."],
                "categories": [], "main_category": "All Beauty", "price": None,
                "details": "{}"}


@pytest.mark.parametrize("gz", [True, False])
def test_2023_parent_asin_default(tmp_path: Path, gz: bool) -> None:
    ext = ".jsonl.gz" if gz else ".jsonl"
    write_lines(tmp_path / f"All_Beauty{ext}", REVIEWS_2023, gz)
    write_lines(tmp_path / f"meta_All_Beauty{ext}", META_2023, gz)
    raw = read_amazon2023(tmp_path).validate()
    inter = raw.interactions
    assert inter["user"].tolist() == ["AGKHLEW2SOWHNMFQIJGBECAF7INQ"] * 2 + [
        "AE74DYR3QUGVPZJ3P7RFWBGIX7XQ"] * 2
    assert inter["item"].tolist() == ["B00YQ6X8EO", "P1", "P1", "P1"]
    # milliseconds -> seconds
    assert inter["timestamp"].tolist() == [1588687728, 1588615855, 1589665266, 1643393630]
    assert inter["rating"].tolist() == [5.0, 4.0, 1.0, 3.0]
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64
    assert list(raw.items.columns) == ["item", "title", "store", "features", "description",
                                       "categories", "main_category", "price", "details"]
    assert as_records(raw.items) == [{"item": "P1", **EXPECTED_P1},
                                     {"item": "B00YQ6X8EO", **EXPECTED_B00}]
    assert raw.text_fields == ["title", "store", "features", "description", "categories",
                               "main_category"]
    assert raw.sources == [tmp_path / f"All_Beauty{ext}", tmp_path / f"meta_All_Beauty{ext}"]
    assert raw.reader == "amazon2023"
    assert raw.options == {"item_key": "parent_asin"}


def test_2023_item_key_asin(tmp_path: Path) -> None:
    write_lines(tmp_path / "All_Beauty.jsonl", REVIEWS_2023)
    meta = write_lines(tmp_path / "m.jsonl.gz", META_2023)
    raw = read_amazon2023(tmp_path / "All_Beauty.jsonl", meta, item_key="asin").validate()
    assert raw.interactions["item"].tolist() == ["B00YQ6X8EO", "B081TJ8YS3", "B081TJ8YS4",
                                                 "B081TJ8YS3"]
    assert raw.interactions["timestamp"].tolist() == [1588687728, 1588615855, 1589665266,
                                                      1643393630]
    # each variant gets its parent's metadata (meta order, then first appearance in reviews)
    assert as_records(raw.items) == [{"item": "B081TJ8YS3", **EXPECTED_P1},
                                     {"item": "B081TJ8YS4", **EXPECTED_P1},
                                     {"item": "B00YQ6X8EO", **EXPECTED_B00}]
    assert raw.items.loc[0, "features"] is not raw.items.loc[1, "features"]
    assert raw.options == {"item_key": "asin"}
    assert raw.sources == [tmp_path / "All_Beauty.jsonl", meta]


def test_2023_hugging_face_layout(tmp_path: Path) -> None:
    (tmp_path / "raw" / "review_categories").mkdir(parents=True)
    (tmp_path / "raw" / "meta_categories").mkdir()
    reviews = write_lines(tmp_path / "raw" / "review_categories" / "All_Beauty.jsonl",
                          REVIEWS_2023)
    meta = write_lines(tmp_path / "raw" / "meta_categories" / "meta_All_Beauty.jsonl", META_2023)
    raw = read_amazon2023(reviews).validate()
    assert raw.sources == [reviews, meta]
    assert raw.items["item"].tolist() == ["P1", "B00YQ6X8EO"]


def test_2023_bad_item_key(tmp_path: Path) -> None:
    write_lines(tmp_path / "All_Beauty.jsonl", REVIEWS_2023)
    write_lines(tmp_path / "meta_All_Beauty.jsonl", META_2023)
    with pytest.raises(LlmesrError, match="item_key"):
        read_amazon2023(tmp_path, item_key="sku")


def test_2023_missing_meta(tmp_path: Path) -> None:
    write_lines(tmp_path / "All_Beauty.jsonl.gz", REVIEWS_2023)
    with pytest.raises(LlmesrError) as e:
        read_amazon2023(tmp_path / "All_Beauty.jsonl.gz")
    assert "meta_All_Beauty.jsonl.gz" in str(e.value) and "--items" in str(e.value)


def test_2023_malformed_lines(tmp_path: Path) -> None:
    bad_time = json.dumps({"rating": 5.0, "asin": "A", "parent_asin": "P1", "user_id": "U",
                           "timestamp": "2020-05-05"})
    write_lines(tmp_path / "All_Beauty.jsonl.gz", REVIEWS_2023 + [bad_time])
    write_lines(tmp_path / "meta_All_Beauty.jsonl.gz", META_2023)
    with pytest.raises(DataFormatError) as e:
        read_amazon2023(tmp_path)
    assert f"{tmp_path / 'All_Beauty.jsonl.gz'}:5:" in str(e.value)
    assert "'timestamp'" in str(e.value)

    no_parent = json.dumps({"rating": 5.0, "asin": "A", "user_id": "U", "timestamp": 1})
    write_lines(tmp_path / "All_Beauty.jsonl.gz", [no_parent])
    with pytest.raises(DataFormatError, match=r"All_Beauty\.jsonl\.gz:1: missing required key "
                                              r"'parent_asin'"):
        read_amazon2023(tmp_path)

    write_lines(tmp_path / "All_Beauty.jsonl.gz", REVIEWS_2023)
    write_lines(tmp_path / "meta_All_Beauty.jsonl.gz",
                META_2023[:2] + ['{"parent_asin": "P1", "title": '])
    # P1's record on line 1 is already read; the truncated line 3 is a second P1 record
    raw = read_amazon2023(tmp_path).validate()
    assert raw.items["item"].tolist() == ["P1", "B00YQ6X8EO"]
    write_lines(tmp_path / "meta_All_Beauty.jsonl.gz",
                ['{"parent_asin": "P1", "title": '] + META_2023)
    with pytest.raises(DataFormatError, match=r"meta_All_Beauty\.jsonl\.gz:1: not a valid JSON"):
        read_amazon2023(tmp_path)
