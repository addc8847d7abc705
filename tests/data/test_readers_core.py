"""s3rec, llmesr-inter and table readers on hand-made files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmesr.data.readers import get_reader
from llmesr.errors import DataFormatError, LlmesrError
from tests.conftest import write


def test_s3rec_with_raw_keys_and_text(tmp_path):
    seq = write(tmp_path / "S.txt", "1 1 2 3\n2 4 2 5\n")
    raw = write(tmp_path / "raw.txt", "UA A1 A2 A3\nUB A4 A2 A5\n")
    text = write(tmp_path / "t.txt", "A2 second item\nA1 first\nA3 third\nA4 fourth\nA5 \n")
    r = get_reader("s3rec")(seq, text, raw_sequences=str(raw), text_field="title")
    assert r.interactions["user"].tolist() == ["UA"] * 3 + ["UB"] * 3
    assert r.interactions["item"].tolist() == ["1", "2", "3", "4", "2", "5"]
    items = r.items.set_index("item")
    assert items.loc["2", "title"] == "second item"
    assert items.loc["2", "raw_key"] == "A2"
    assert items.loc["5", "title"] == ""
    assert r.text_fields == ["title"]
    assert [p.name for p in r.sources] == ["S.txt", "raw.txt", "t.txt"]


def test_s3rec_json_zero_based(tmp_path):
    seq = write(tmp_path / "S.txt", "1 1 2\n2 2 1\n")
    js = write(tmp_path / "i.json", json.dumps({"0": {"title": "A", "description": "x, y"},
                                                 "1": {"title": "B", "description": "z"}}))
    r = get_reader("s3rec")(seq, js, text_keys="zero_based")
    items = r.items.set_index("item")
    assert items.loc["1", "title"] == "A" and items.loc["2", "description"] == "z"
    assert r.text_fields == ["title", "description"]


@pytest.mark.parametrize("content,needle", [
    ("1 1 2\n2 x 3\n", ":2: 'x' is not a positive integer"),
    ("1 1 2\n2\n", ":2: "),
])
def test_s3rec_malformed_line(tmp_path, content, needle):
    seq = write(tmp_path / "S.txt", content)
    with pytest.raises(DataFormatError, match=needle):
        get_reader("s3rec")(seq)


def test_s3rec_unknown_item_in_text_file(tmp_path):
    seq = write(tmp_path / "S.txt", "1 1 2\n")
    text = write(tmp_path / "t.txt", "1 one\n7 seven\n")
    with pytest.raises(DataFormatError, match=r"t.txt:2: unknown item '7'"):
        get_reader("s3rec")(seq, text)


def test_s3rec_raw_file_mismatch(tmp_path):
    seq = write(tmp_path / "S.txt", "1 1 2\n2 2 1\n")
    raw = write(tmp_path / "raw.txt", "UA A1 A2\nUB A1 A2\n")  # A1 is item 1, then item 2
    with pytest.raises(DataFormatError, match="raw.txt:2: raw item"):
        get_reader("s3rec")(seq, raw_sequences=str(raw))


def test_llmesr_inter(tmp_path):
    f = write(tmp_path / "inter.txt", "1 1\n1 2\n1 1\n2 3\n2 2\n")
    r = get_reader("llmesr-inter")(f)
    assert r.interactions.values.tolist() == [["1", "1"], ["1", "2"], ["1", "1"], ["2", "3"],
                                              ["2", "2"]]
    bad = write(tmp_path / "bad.txt", "1 1\n1 2 3\n")
    with pytest.raises(DataFormatError, match=r"bad.txt:2: expected 'user item'"):
        get_reader("llmesr-inter")(bad)


def test_llmesr_inter_items_unknown_item(tmp_path):
    f = write(tmp_path / "inter.txt", "1 1\n1 2\n")
    items = write(tmp_path / "items.csv", "item_id,title\n1,a\n9,b\n")
    with pytest.raises(DataFormatError, match="unknown item '9'"):
        get_reader("llmesr-inter")(f, items)


def test_table_csv_with_dates_and_items(tmp_path):
    inter = write(tmp_path / "r.csv", "uid,iid,ts,stars\nu1,i1,2020-01-02,5\n"
                                      "u1,i2,2020-01-01 10:00:00,3\nu2,i1,2021-05-05,4\n")
    items = write(tmp_path / "it.csv", "iid,title,genre\ni1,Alpha,x\ni2,,y\ni3,Gamma,z\n")
    r = get_reader("table")(inter, items, user_col="uid", item_col="iid", time_col="ts",
                            rating_col="stars", text_fields="title")
    assert r.interactions["timestamp"].tolist() == [1577923200, 1577872800, 1620172800]
    assert r.interactions["rating"].dtype == np.float64
    assert r.text_fields == ["title"]
    assert r.items.set_index("item").loc["i2", "title"] is None


def test_table_parquet_jsonl_and_ms_times(tmp_path):
    df = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10],
                       "t": [1_600_000_000_000, 1_600_000_001_000, 1_600_000_002_500]})
    df.to_parquet(tmp_path / "x.parquet")
    r = get_reader("table")(tmp_path / "x.parquet", time_col="t")
    assert r.interactions["timestamp"].tolist() == [1_600_000_000, 1_600_000_001, 1_600_000_002]
    assert r.interactions["user"].tolist() == ["1", "1", "2"]
    df.to_json(tmp_path / "x.jsonl", orient="records", lines=True)
    r2 = get_reader("table")(tmp_path / "x.jsonl", time_col="t", time_unit="ms")
    assert r2.interactions["item"].tolist() == ["10", "11", "10"]


def test_table_errors(tmp_path):
    inter = write(tmp_path / "r.csv", "user_id,item_id,ts\nu1,i1,5\nu2,,6\n")
    with pytest.raises(DataFormatError, match=r"r.csv:3: empty item id"):
        get_reader("table")(inter)
    with pytest.raises(DataFormatError, match="missing column 'when'.*columns present: "
                                              "user_id, item_id, ts"):
        get_reader("table")(inter, time_col="when")
    bad_t = write(tmp_path / "t.csv", "user_id,item_id,ts\nu1,i1,5\nu2,i2,soon\n")
    with pytest.raises(DataFormatError, match=r"t.csv:3: timestamp 'soon' is not a number"):
        get_reader("table")(bad_t, time_col="ts", time_unit="s")
    with pytest.raises(LlmesrError, match="has no option"):
        get_reader("table")(inter, colour="red")
    with pytest.raises(LlmesrError, match="not found"):
        get_reader("table")(tmp_path / "nope.csv")
