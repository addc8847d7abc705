"""S3-Rec / SASRec sequence files (``uid i1 i2 ...`` per line) plus an item-text source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from llmesr.data.io import first_char, iter_lines, read_text, require_file
from llmesr.data.types import RawData, empty_items
from llmesr.errors import DataFormatError, LlmesrError

_INT_LINE = re.compile(r"\d+(?:[ \t]+\d+)+")


def read_sequence_lines(path: Path, numeric: bool = True) -> tuple[list[str], list[list[str]]]:
    """Read ``uid i1 i2 ...`` lines: returns user ids and their item-id token lists."""
    users: list[str] = []
    seqs: list[list[str]] = []
    for lineno, line in iter_lines(path):
        line = line.strip()
        if numeric and not _INT_LINE.fullmatch(line):
            toks = line.split()
            if len(toks) < 2:
                raise DataFormatError(f"{path}:{lineno}: expected 'user item item ...' "
                                      f"(space-separated integer ids), got {line[:60]!r}")
            bad = next(t for t in toks if not t.isdigit())
            raise DataFormatError(f"{path}:{lineno}: '{bad}' is not a positive integer id "
                                  "(this format has numeric ids; use the table reader for "
                                  "other ids)")
        toks = line.split()
        if len(toks) < 2:
            raise DataFormatError(f"{path}:{lineno}: a user with no items: {line[:60]!r}")
        users.append(toks[0])
        seqs.append(toks[1:])
    return users, seqs


def _raw_key_map(raw_path: Path, users: list[str], seqs: list[list[str]]
                 ) -> tuple[dict[str, str], list[str]]:
    """Map raw item keys (e.g. ASINs) to the numeric ids of ``seqs``.

    The raw file has the same users in the same order with raw ids; an item's numeric id is the
    order of first appearance of its raw key. Every position is checked for consistency.
    """
    raw_users, raw_seqs = read_sequence_lines(raw_path, numeric=False)
    if len(raw_seqs) != len(seqs):
        raise DataFormatError(f"{raw_path}: has {len(raw_seqs)} users but the sequence file has "
                              f"{len(seqs)}; they must describe the same users line by line")
    key2id: dict[str, str] = {}
    id2key: dict[str, str] = {}
    for k, (raw, num) in enumerate(zip(raw_seqs, seqs)):
        if len(raw) != len(num):
            raise DataFormatError(f"{raw_path}:{k + 1}: {len(raw)} items, but line {k + 1} of "
                                  f"the sequence file has {len(num)}")
        for key, iid in zip(raw, num):
            known = key2id.setdefault(key, iid)
            if known != iid or id2key.setdefault(iid, key) != key:
                raise DataFormatError(f"{raw_path}:{k + 1}: raw item '{key}' is item {iid} here "
                                      f"but item {known} earlier; the files do not match")
    return key2id, raw_users


def read_item_text(path: Path, key_to_item: dict[str, str] | None, valid_items: set[str],
                   text_keys: str, text_field: str) -> tuple[pd.DataFrame, list[str]]:
    """Read an item-text file: a JSON object ``{key: {field: text}}`` or ``KEY text`` lines."""
    require_file(path, "item-text file")
    head = first_char(path)
    records: dict[str, dict[str, object]] = {}

    def item_of(key: str, where: str) -> str:
        if text_keys == "raw":
            assert key_to_item is not None
            iid = key_to_item.get(key)
        elif text_keys == "zero_based":
            iid = str(int(key) + 1) if key.isdigit() else None
        else:
            iid = key if key in valid_items else None
        if iid is None or iid not in valid_items:
            raise DataFormatError(f"{where}: unknown item '{key}' (it is not in the sequences; "
                                  f"text_keys={text_keys})")
        if iid in records:
            raise DataFormatError(f"{where}: item '{key}' has a second text entry")
        return iid

    if head == "{":
        try:
            obj = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}: expected one JSON object {{key: text}}, got "
                                  f"{type(obj).__name__}")
        for key, value in obj.items():
            iid = item_of(str(key), f"{path}: key {key!r}")
            if isinstance(value, dict):
                records[iid] = {str(k): v for k, v in value.items()}
            elif isinstance(value, str):
                records[iid] = {text_field: value}
            else:
                raise DataFormatError(f"{path}: key {key!r}: expected an object of text fields "
                                      f"or a string, got {type(value).__name__}")
    else:
        for lineno, line in iter_lines(path):
            key, _, text = line.strip().partition(" ")
            iid = item_of(key, f"{path}:{lineno}")
            records[iid] = {text_field: text.strip()}
    fields: list[str] = []
    for rec in records.values():
        for k in rec:
            if k not in fields:
                fields.append(k)
    table = pd.DataFrame({"item": list(records)}, dtype=object)
    for fld in fields:
        table[fld] = pd.Series([rec.get(fld) for rec in records.values()], dtype=object)
    return table, fields


def read_s3rec(source: Path, items: Path | None = None, *, raw_sequences: str | None = None,
               text_keys: str = "auto", text_field: str = "text") -> RawData:
    """Read an S3-Rec style sequence file and its item text.

    Files:
        ``source``: one line per user, ``uid i1 i2 ...`` (space-separated positive integers,
        items in chronological order).
        ``items`` (optional): item text, either a JSON object ``{"<key>": {"title": ...,
        "description": ...}}`` (or ``{"<key>": "text"}``) or lines ``KEY free text``.

    Options:
        raw_sequences: path to the same sequences written with raw ids (``reviewerID ASIN ASIN
            ...``); an item's numeric id is the order of first appearance of its raw key. Gives
            users their raw ids, items a ``raw_key`` column, and lets the text file use raw
            keys.
        text_keys: how item-text keys name items: ``item_id`` (the numeric id), ``zero_based``
            (key k is item k+1, as in LETTER's ``Yelp.item.json``), ``raw`` (raw keys through
            ``raw_sequences``); ``auto`` = ``raw`` when ``raw_sequences`` is given, else
            ``item_id``.
        text_field: field name for plain-text values (default ``text``).

    A key in the text file that names no item of the sequences is an error.
    """
    require_file(source, "sequence file")
    users, seqs = read_sequence_lines(source)
    if text_keys == "auto":
        text_keys = "raw" if raw_sequences else "item_id"
    if text_keys not in ("item_id", "zero_based", "raw"):
        raise LlmesrError(f"text_keys must be item_id, zero_based, raw or auto, not {text_keys!r}")
    if text_keys == "raw" and not raw_sequences:
        raise LlmesrError("text_keys=raw needs -o raw_sequences=PATH (the same sequences with "
                          "raw ids)")
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    item_col = np.array([t for s in seqs for t in s], dtype=object)
    inter = pd.DataFrame({"user": np.repeat(np.array(users, dtype=object), lengths),
                          "item": item_col})
    sources = [source]
    key_to_item = None
    raw_users = None
    if raw_sequences:
        raw_path = require_file(raw_sequences, "raw sequence file")
        key_to_item, raw_users = _raw_key_map(raw_path, users, seqs)
        sources.append(raw_path)
    valid = set(inter["item"].unique())
    fields: list[str] = []
    if items is not None:
        table, fields = read_item_text(items, key_to_item, valid, text_keys, text_field)
        sources.append(items)
    else:
        table = empty_items()
    if key_to_item is not None:
        # Items keep their numeric ids; the raw key is an attribute, users get their raw ids.
        id_to_key = {v: k for k, v in key_to_item.items()}
        if len(table) == 0:
            table = pd.DataFrame({"item": sorted(valid, key=int)}, dtype=object)
        table.insert(1, "raw_key", table["item"].map(id_to_key).astype(object))
        inter["user"] = np.repeat(np.array(raw_users, dtype=object), lengths)
    return RawData(interactions=inter, items=table, text_fields=fields, sources=sources,
                   reader="s3rec",
                   options={"raw_sequences": raw_sequences, "text_keys": text_keys,
                            "text_field": text_field})
