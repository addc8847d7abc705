"""Tests for the Yelp Open Dataset reader."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from llmesr.data.readers.yelp import read_yelp
from llmesr.errors import DataFormatError, LlmesrError

REVIEW = "yelp_academic_dataset_review.json"
BUSINESS = "yelp_academic_dataset_business.json"


def _jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _review(rid: str, user: str, biz: str, stars, date: str, text: str = "Nice.") -> dict:
    return {"review_id": rid, "user_id": user, "business_id": biz, "stars": stars, "useful": 1,
            "funny": 0, "cool": 0, "text": text, "date": date}


NEW_BUSINESSES = [
    {"business_id": "bUnused", "name": "Nobody Reviews Me", "address": "", "city": "Reno",
     "state": "NV", "postal_code": "89501", "latitude": 39.5, "longitude": -119.8, "stars": 2.0,
     "review_count": 5, "is_open": 1, "attributes": None, "categories": "Bars", "hours": None},
    {"business_id": "bB", "name": "Café Olé", "address": "1 Main St", "city": "Tucson",
     "state": "AZ", "postal_code": "85701", "latitude": 32.2, "longitude": -110.9, "stars": 4.5,
     "review_count": 12, "is_open": 0, "attributes": {"WiFi": "u'free'"},
     "categories": "Coffee & Tea,  Food , Breakfast & Brunch", "hours": {"Monday": "7:0-15:0"}},
    {"business_id": "bA", "name": "Null Cats", "address": "2 Side St", "city": "Tampa",
     "state": "FL", "postal_code": "33602", "latitude": 27.9, "longitude": -82.4, "stars": 3.0,
     "review_count": 3, "is_open": 1, "attributes": None, "categories": None, "hours": None},
]


@pytest.fixture()
def new_release(tmp_path: Path) -> Path:
    _jsonl(tmp_path / REVIEW, [
        _review("r1", "uZ", "bA", 4.0, "2018-07-07 22:09:11"),
        _review("r2", "uY", "bB", 1.0, "2012-01-03 15:28:18",
                text='tricky "business_id": "bUnused" text'),
        "",
        _review("r3", "uZ", "bB", 5.0, "2014-02-05 20:30:30"),
        _review("r4", "uX", "bMissing", 2.0, "2014-02-05 20:30:30"),
    ])
    _jsonl(tmp_path / BUSINESS, NEW_BUSINESSES)
    return tmp_path


def test_new_schema_interactions_exact(new_release: Path) -> None:
    raw = read_yelp(new_release / REVIEW, new_release / BUSINESS)
    inter = raw.interactions
    assert list(inter.columns) == ["user", "item", "timestamp", "rating"]
    assert inter["user"].tolist() == ["uZ", "uY", "uZ", "uX"]
    assert inter["item"].tolist() == ["bA", "bB", "bB", "bMissing"]
    assert inter["timestamp"].tolist() == [1531001351, 1325604498, 1391632230, 1391632230]
    assert inter["rating"].tolist() == [4.0, 1.0, 5.0, 2.0]
    assert inter["timestamp"].dtype == "int64"
    assert inter["rating"].dtype == "float64"
    assert pd.api.types.is_string_dtype(inter["user"])
    assert pd.api.types.is_string_dtype(inter["item"])
    assert raw.reader == "yelp"
    assert raw.options == {}
    assert raw.text_fields == ["name", "categories"]
    assert raw.sources == [new_release / REVIEW, new_release / BUSINESS]
    raw.validate()


def test_new_schema_items_only_reviewed_businesses(new_release: Path) -> None:
    raw = read_yelp(new_release / REVIEW, new_release / BUSINESS)
    assert list(raw.items.columns) == ["item", "name", "categories", "city", "state", "stars",
                                       "review_count", "is_open", "type"]
    assert raw.items.to_dict("records") == [
        {"item": "bB", "name": "Café Olé", "categories": ["Coffee & Tea", "Food",
                                                         "Breakfast & Brunch"],
         "city": "Tucson", "state": "AZ", "stars": 4.5, "review_count": 12, "is_open": False,
         "type": None},
        {"item": "bA", "name": "Null Cats", "categories": [], "city": "Tampa", "state": "FL",
         "stars": 3.0, "review_count": 3, "is_open": True, "type": None},
    ]
    assert raw.items["is_open"].tolist()[0] is False


def test_old_schema_and_date_only(tmp_path: Path) -> None:
    reviews = _jsonl(tmp_path / "reviews.json", [
        {"votes": {"funny": 0, "useful": 2, "cool": 1}, "user_id": "Xqd0DzHaiyRqVH3WRG7hzg",
         "review_id": "15SdjuK7DmYqUAj6rjGowg", "stars": 5, "date": "2007-05-17",
         "text": "dr. goldberg offers everything", "type": "review",
         "business_id": "vcNAWiLM4dR7D2nwwJ7nCA"},
        {"votes": {"funny": 0, "useful": 0, "cool": 0}, "user_id": "H1kH6QZV7Le4zqTRNxoZow",
         "review_id": "RF6UnRTtG7tWMcrO2GEoAg", "stars": 2, "date": "2010-03-22",
         "text": "Unfortunately", "type": "review", "business_id": "vcNAWiLM4dR7D2nwwJ7nCA"},
    ])
    business = _jsonl(tmp_path / "business.json", [
        {"business_id": "vcNAWiLM4dR7D2nwwJ7nCA", "full_address": "4840 E Indian School Rd",
         "hours": {}, "open": True, "categories": ["Doctors", " Health & Medical "],
         "city": "Phoenix", "review_count": 7, "name": "Eric Goldberg, MD",
         "neighborhoods": [], "longitude": -111.98, "state": "AZ", "stars": 3.5,
         "latitude": 33.49, "attributes": {}, "type": "business"},
        {"business_id": "other", "open": False, "categories": [], "city": "Mesa",
         "review_count": 1, "name": "Other", "state": "AZ", "stars": 1.0, "type": "business"},
    ])
    raw = read_yelp(reviews, business)
    assert raw.interactions["timestamp"].tolist() == [1179360000, 1269216000]
    assert raw.interactions["rating"].tolist() == [5.0, 2.0]
    assert raw.interactions["rating"].dtype == "float64"
    assert raw.items.to_dict("records") == [
        {"item": "vcNAWiLM4dR7D2nwwJ7nCA", "name": "Eric Goldberg, MD",
         "categories": ["Doctors", "Health & Medical"], "city": "Phoenix", "state": "AZ",
         "stars": 3.5, "review_count": 7, "is_open": True, "type": "business"},
    ]


def test_folder_source_finds_both_files(new_release: Path) -> None:
    raw = read_yelp(new_release)
    assert raw.sources == [new_release / REVIEW, new_release / BUSINESS]
    assert len(raw.interactions) == 4
    assert raw.items["item"].tolist() == ["bB", "bA"]


def test_review_file_source_finds_sibling_business_file(new_release: Path) -> None:
    raw = read_yelp(new_release / REVIEW)
    assert raw.sources[1] == new_release / BUSINESS


def test_gzipped_files_in_folder(new_release: Path, tmp_path: Path) -> None:
    folder = tmp_path / "gz"
    folder.mkdir()
    for name in (REVIEW, BUSINESS):
        (folder / f"{name}.gz").write_bytes(gzip.compress((new_release / name).read_bytes()))
    raw = read_yelp(folder)
    assert raw.interactions["timestamp"].tolist() == [1531001351, 1325604498, 1391632230,
                                                      1391632230]
    assert raw.items["item"].tolist() == ["bB", "bA"]


def test_missing_business_file_asks_for_items(tmp_path: Path) -> None:
    _jsonl(tmp_path / REVIEW, [_review("r1", "u", "b", 4.0, "2018-07-07 22:09:11")])
    with pytest.raises(LlmesrError, match="--items") as exc:
        read_yelp(tmp_path)
    assert BUSINESS in str(exc.value)
    with pytest.raises(LlmesrError, match="nope.json"):
        read_yelp(tmp_path / REVIEW, tmp_path / "nope.json")


def test_missing_review_file(tmp_path: Path) -> None:
    with pytest.raises(LlmesrError, match=REVIEW):
        read_yelp(tmp_path)


@pytest.mark.parametrize("bad_line, message", [
    ('{"user_id": "u", "business_id": "b", "stars": 4', "not valid JSON"),
    (json.dumps(_review("r", "u", "b", 3.0, "2018-13-45 10:00:00")), "2018-13-45"),
    (json.dumps(_review("r", "u", "b", 3.0, "07/07/2018")), "07/07/2018"),
    (json.dumps(_review("r", "u", "b", 3.0, "2018-07-07 10:00")), "2018-07-07 10:00"),
    (json.dumps(_review("r", "", "b", 3.0, "2018-07-07 10:00:00")), "user_id"),
    (json.dumps({"user_id": "u", "stars": 3.0, "date": "2018-07-07 10:00:00"}), "business_id"),
    (json.dumps(_review("r", "u", "b", "four", "2018-07-07 10:00:00")), "stars"),
    (json.dumps(_review("r", "u", "b", 3.0, None)), "date"),
    ("[1, 2]", "JSON object"),
])
def test_malformed_review_line_names_file_and_line(tmp_path: Path, bad_line: str,
                                                   message: str) -> None:
    reviews = _jsonl(tmp_path / REVIEW, [
        _review("r1", "u1", "b1", 4.0, "2018-07-07 22:09:11"),
        "",
        _review("r2", "u2", "b1", 3.0, "2018-07-08 22:09:11"),
        bad_line,
        _review("r3", "u3", "b1", 3.0, "2018-07-09 22:09:11"),
    ])
    _jsonl(tmp_path / BUSINESS, NEW_BUSINESSES)
    with pytest.raises(DataFormatError) as exc:
        read_yelp(reviews)
    text = str(exc.value)
    assert f"{REVIEW}:4:" in text
    assert message in text


def test_malformed_business_lines(tmp_path: Path) -> None:
    reviews = _jsonl(tmp_path / REVIEW, [_review("r1", "u1", "bA", 4.0, "2018-07-07 22:09:11")])
    business = tmp_path / BUSINESS
    _jsonl(business, [NEW_BUSINESSES[0], {"business_id": "bA", "name": "A", "categories": 7}])
    with pytest.raises(DataFormatError, match=rf"{BUSINESS}:2: 'categories'"):
        read_yelp(reviews)
    _jsonl(business, [{"business_id": "bA", "name": "A", "is_open": 3}])
    with pytest.raises(DataFormatError, match=rf"{BUSINESS}:1: 'is_open'"):
        read_yelp(reviews)
    _jsonl(business, [{"business_id": "bA", "name": "A"}, {"business_id": "bB"},
                      {"business_id": "bA", "name": "A again"}])
    with pytest.raises(DataFormatError, match=rf"{BUSINESS}:3: .*bA.*line 1"):
        read_yelp(reviews)
    # an unreviewed business is skipped without parsing it, so its broken JSON is not an error
    _jsonl(business, ['{"business_id": "zzz", "name": broken', {"business_id": "bA"}])
    assert read_yelp(reviews).items["item"].tolist() == ["bA"]
    _jsonl(business, ['{"business_id": "bA", "name": broken'])
    with pytest.raises(DataFormatError, match=rf"{BUSINESS}:1: not valid JSON"):
        read_yelp(reviews)


def test_date_error_in_later_chunk_reports_its_line(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import llmesr.data.readers.yelp as yelp

    monkeypatch.setattr(yelp, "_CHUNK", 2)
    rows = [_review(f"r{i}", f"u{i}", "bA", 3.0, f"2018-07-0{i} 10:00:00") for i in range(1, 6)]
    rows[3]["date"] = "2018-02-30 10:00:00"
    reviews = _jsonl(tmp_path / REVIEW, rows)
    _jsonl(tmp_path / BUSINESS, NEW_BUSINESSES)
    with pytest.raises(DataFormatError, match=rf"{REVIEW}:4: date '2018-02-30 10:00:00'"):
        read_yelp(reviews)
    rows[3]["date"] = "2018-07-04"
    _jsonl(reviews, rows)
    assert read_yelp(reviews).interactions["timestamp"].tolist() == [
        1530439200, 1530525600, 1530612000, 1530662400, 1530784800]
