"""Reader for the Yelp Open Dataset (reviews + businesses, JSON lines)."""

from __future__ import annotations

import json
import re
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmesr.data.io import iter_lines, require_file
from llmesr.data.types import RawData
from llmesr.errors import DataFormatError, LlmesrError

REVIEW_FILE = "yelp_academic_dataset_review.json"
BUSINESS_FILE = "yelp_academic_dataset_business.json"

#: Dates are converted in chunks of this many reviews (bounds memory on the 7M-review file).
_CHUNK = 1 << 20

_BUSINESS_ID_RE = re.compile(r'"business_id"\s*:\s*"([^"\\]*)"')
_EPOCH = pd.Timestamp("1970-01-01")


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_json(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") \
            from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got "
                              f"{type(obj).__name__}")
    return obj


def _id(path: Path, lineno: int, obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if key not in obj else f"{value!r}"
        raise DataFormatError(f"{path}:{lineno}: '{key}' must be a non-empty string ({got})")
    return value


def _dates_to_seconds(path: Path, dates: list[str], linenos: array) -> np.ndarray:
    """Vectorised "YYYY-MM-DD HH:MM:SS" (or "YYYY-MM-DD") → int64 Unix seconds, UTC."""
    s = pd.Series(dates, dtype=object)
    parsed = pd.to_datetime(s, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    missing = parsed.isna().to_numpy()
    if missing.any():  # older releases: date only
        parsed[missing] = pd.to_datetime(s[missing], format="%Y-%m-%d", errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            k = int(bad.nonzero()[0][0])
            raise DataFormatError(f"{path}:{linenos[k]}: date {dates[k]!r} is not "
                                  "'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD'")
    return ((parsed - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype="int64")


def _review_problem(path: Path, lineno: int, obj: dict[str, Any]) -> DataFormatError:
    """The error for a review that failed the fast checks in :func:`_read_reviews`."""
    _id(path, lineno, obj, "user_id")
    _id(path, lineno, obj, "business_id")
    rating = obj.get("stars")
    if isinstance(rating, bool) or not isinstance(rating, (int, float)):
        return DataFormatError(f"{path}:{lineno}: 'stars' must be a number "
                               f"({'missing' if 'stars' not in obj else repr(rating)})")
    date = obj.get("date")
    return DataFormatError(f"{path}:{lineno}: 'date' must be a string "
                           f"({'missing' if 'date' not in obj else repr(date)})")


def _read_reviews(path: Path) -> pd.DataFrame:
    users: list[str] = []
    items: list[str] = []
    stars = array("d")
    seconds: list[np.ndarray] = []
    dates: list[str] = []
    date_lines = array("q")
    intern: dict[str, str] = {}  # one str object per distinct id (millions of repeats)
    loads = json.loads
    number = (int, float)
    for lineno, line in iter_lines(path):  # hot loop (millions of lines): keep it flat
        try:
            obj = loads(line)
            user = obj["user_id"]
            item = obj["business_id"]
            rating = obj["stars"]
            date = obj["date"]
            ok = (type(user) is str and type(item) is str and type(date) is str
                  and type(rating) in number and user.strip() != "" and item.strip() != "")
        except (ValueError, KeyError, TypeError, IndexError):
            ok = False
        if not ok:
            raise _review_problem(path, lineno, _load_json(path, lineno, line))
        users.append(intern.setdefault(user, user))
        items.append(intern.setdefault(item, item))
        stars.append(rating)
        dates.append(date)
        date_lines.append(lineno)
        if len(dates) >= _CHUNK:
            seconds.append(_dates_to_seconds(path, dates, date_lines))
            dates, date_lines = [], array("q")
    if dates:
        seconds.append(_dates_to_seconds(path, dates, date_lines))
    timestamps = np.concatenate(seconds) if seconds else np.array([], dtype="int64")
    return pd.DataFrame({
        "user": pd.Series(users, dtype=str),
        "item": pd.Series(items, dtype=str),
        "timestamp": pd.Series(timestamps, dtype="int64"),
        "rating": pd.Series(np.frombuffer(stars, dtype="float64") if stars else [],
                            dtype="float64"),
    })


def _categories(path: Path, lineno: int, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = value
    else:
        raise DataFormatError(f"{path}:{lineno}: 'categories' must be a comma-separated string, "
                              f"a list of strings or null, got {value!r}")
    return [c.strip() for c in parts if c.strip()]


def _is_open(path: Path, lineno: int, obj: dict[str, Any]) -> bool | None:
    key = "is_open" if "is_open" in obj else "open"
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise DataFormatError(f"{path}:{lineno}: '{key}' must be 0/1, true/false or null, "
                          f"got {value!r}")


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _number(path: Path, lineno: int, obj: dict[str, Any], key: str) -> int | float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataFormatError(f"{path}:{lineno}: '{key}' must be a number or null, "
                              f"got {value!r}")
    return value


_ITEM_COLUMNS = ("name", "categories", "city", "state", "stars", "review_count", "is_open",
                 "type")


def _read_businesses(path: Path, wanted: set[str]) -> pd.DataFrame:
    rows: dict[str, list[Any]] = {c: [] for c in ("item", *_ITEM_COLUMNS)}
    first_line: dict[str, int] = {}
    for lineno, line in iter_lines(path):
        m = _BUSINESS_ID_RE.search(line)
        if m is not None and m.group(1) not in wanted:
            continue  # cheap skip: most businesses have no review in a filtered review file
        obj = _load_json(path, lineno, line)
        item = _id(path, lineno, obj, "business_id")
        if item not in wanted:
            continue
        if item in first_line:
            raise DataFormatError(f"{path}:{lineno}: business_id '{item}' appears again "
                                  f"(first on line {first_line[item]})")
        first_line[item] = lineno
        rows["item"].append(item)
        rows["name"].append(_text(obj, "name"))
        rows["categories"].append(_categories(path, lineno, obj.get("categories")))
        rows["city"].append(_text(obj, "city"))
        rows["state"].append(_text(obj, "state"))
        rows["stars"].append(_number(path, lineno, obj, "stars"))
        rows["review_count"].append(_number(path, lineno, obj, "review_count"))
        rows["is_open"].append(_is_open(path, lineno, obj))
        rows["type"].append(_text(obj, "type"))
    out = {"item": pd.Series(rows["item"], dtype=str)}
    for c in _ITEM_COLUMNS:
        out[c] = pd.Series(rows[c], dtype=object)
    return pd.DataFrame(out)


def read_yelp(source: Path, items: Path | None = None) -> RawData:
    """Read the Yelp Open Dataset (current and older releases).

    Files:
        ``source`` is ``yelp_academic_dataset_review.json`` or the folder holding it (``.gz``
        copies are also found). ``items`` is ``yelp_academic_dataset_business.json``; by default
        it is looked for next to the review file. Both are JSON lines (UTF-8). Reviews need
        ``user_id``, ``business_id``, ``stars`` and ``date`` (``"YYYY-MM-DD HH:MM:SS"``, or
        ``"YYYY-MM-DD"`` in older releases, taken as UTC). Businesses may use the current schema
        (``is_open`` 0/1, ``categories`` a comma-separated string or null) or the older one used
        by the LLM-ESR paper (``type``, ``open`` true/false, ``categories`` a list).

    Options:
        none.

    Output:
        interactions: ``user`` (user_id), ``item`` (business_id), ``timestamp`` (int64 Unix
            seconds), ``rating`` (float64 stars), in file order.
        items: one row per business that has at least one review, in business-file order:
            ``item``, ``name``, ``categories`` (list of str, ``[]`` when null), ``city``,
            ``state``, ``stars``, ``review_count``, ``is_open`` (bool or None, from ``is_open``
            or ``open``), ``type`` (str or None). Text fields: ``name``, ``categories``.
    """
    source = Path(source)
    if source.is_dir():
        review_path = _find(source, REVIEW_FILE)
        if review_path is None:
            raise LlmesrError(f"Yelp review file not found: {source / REVIEW_FILE}")
    else:
        review_path = require_file(source, "Yelp review file")
    if items is None:
        business_path = _find(review_path.parent, BUSINESS_FILE)
        if business_path is None:
            raise LlmesrError(f"Yelp business file not found: {review_path.parent / BUSINESS_FILE}"
                              " (pass the business file with --items)")
    else:
        business_path = require_file(items, "Yelp business file")

    interactions = _read_reviews(review_path)
    wanted = set(interactions["item"].unique().tolist()) if len(interactions) else set()
    items_df = _read_businesses(business_path, wanted)
    return RawData(interactions=interactions, items=items_df, text_fields=["name", "categories"],
                   sources=[review_path, business_path], reader="yelp", options={})
