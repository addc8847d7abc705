"""Readers for the three public Amazon review corpora (2014, 2018 and 2023 releases).

Each release comes as a reviews file (one review per line) and a metadata file (one item per
line). The readers turn them into :class:`~llmesr.data.types.RawData`:

- ``interactions``: ``user``, ``item``, ``timestamp`` (Unix seconds), ``rating``, one row per
  review in file order;
- ``items``: one row per *reviewed* item that has a metadata record, with the metadata fields
  useful for prompts under the dataset's own names.

Metadata files are large (the 2014 Books meta has millions of lines), so every meta line's item
id is first pulled out with a regular expression and the line is only parsed in full when that
item was reviewed. A consequence: a malformed meta line about an item nobody reviewed is
skipped without being reported.

The 2014 metadata is written as Python dict literals (single quotes); those lines are parsed
with :func:`ast.literal_eval`, which only accepts literals and never runs code.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmesr.data.io import iter_lines, require_file
from llmesr.data.types import RawData
from llmesr.errors import DataFormatError, LlmesrError

try:  # orjson is optional: much faster, same results for our purposes
    import orjson as _orjson

    _json_loads: Callable[[str], Any] = _orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None
    _json_loads = json.loads

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# --------------------------------------------------------------------------------------------
# File discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """How one release names its files."""

    reviews_pattern: re.Pattern[str]  # group "cat" is the category part of the name
    reviews_example: str              # for messages, e.g. "reviews_<Category>.json.gz"
    meta_names: tuple[str, ...]       # format strings with {cat}, most usual first
    meta_dirs: tuple[str, ...] = (".",)  # where to look, relative to the reviews file's folder


_LAYOUT_2014 = _Layout(
    re.compile(r"^reviews_(?P<cat>.+?)(?:_5)?\.json(?:\.gz)?$"),
    "reviews_<Category>.json.gz",
    ("meta_{cat}.json.gz", "meta_{cat}.json"),
)
_LAYOUT_2018 = _Layout(
    re.compile(r"^(?!meta_)(?P<cat>.+?)(?:_5)?\.json(?:\.gz)?$"),
    "<Category>.json.gz or <Category>_5.json.gz",
    ("meta_{cat}.json.gz", "meta_{cat}.json"),
)
_LAYOUT_2023 = _Layout(
    re.compile(r"^(?!meta_)(?P<cat>.+?)\.jsonl(?:\.gz)?$"),
    "<Category>.jsonl or <Category>.jsonl.gz",
    ("meta_{cat}.jsonl.gz", "meta_{cat}.jsonl"),
    # the Hugging Face copy keeps raw/review_categories/<Cat>.jsonl and
    # raw/meta_categories/meta_<Cat>.jsonl
    (".", "../meta_categories"),
)


def _find_files(source: Path, items: Path | None, layout: _Layout,
                release: str) -> tuple[Path, Path]:
    """Return ``(reviews_path, meta_path)`` for a reviews file or a directory."""
    if source.is_dir():
        found = sorted(p for p in source.iterdir()
                       if p.is_file() and layout.reviews_pattern.match(p.name))
        if not found:
            raise LlmesrError(f"no Amazon {release} reviews file ({layout.reviews_example}) "
                              f"in directory {source}")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise LlmesrError(f"directory {source} holds several Amazon {release} reviews "
                              f"files ({names}); pass the one you want as the source")
        reviews = found[0]
    else:
        reviews = require_file(source, f"Amazon {release} reviews file")

    if items is not None:
        return reviews, require_file(items, f"Amazon {release} metadata file")

    m = layout.reviews_pattern.match(reviews.name)
    if m is None:
        hint = (" (this looks like a metadata file: pass the reviews file as the source and "
                "this file with --items)" if reviews.name.startswith("meta_") else "")
        raise LlmesrError(f"cannot tell which metadata file belongs to {reviews}: the reviews "
                          f"file is expected to be named {layout.reviews_example}{hint}; "
                          "pass the metadata file with --items")
    cat = m.group("cat")
    folders = [Path(os.path.normpath(reviews.parent / d)) if d != "." else reviews.parent
               for d in layout.meta_dirs]
    candidates = [folder / name.format(cat=cat) for folder in folders
                  for name in layout.meta_names]
    for cand in candidates:
        if cand.is_file():
            return reviews, cand
    names = [name.format(cat=cat) for name in layout.meta_names]
    alternatives = " or ".join(names[1:])
    where = " or ".join(str(f) for f in folders)
    raise LlmesrError(f"metadata file for {reviews.name} not found: expected {names[0]}"
                      + (f" (or {alternatives})" if alternatives else "")
                      + f" in {where}; pass the metadata file with --items")


# --------------------------------------------------------------------------------------------
# Line parsing and value checks
# --------------------------------------------------------------------------------------------


def _parse_json(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        rec = _json_loads(line)
    except ValueError as e:  # json.JSONDecodeError and orjson.JSONDecodeError are ValueErrors
        raise DataFormatError(f"{path}:{lineno}: not a valid JSON line ({e})") from None
    if not isinstance(rec, dict):
        raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got "
                              f"{type(rec).__name__}")
    return rec


def _parse_json_or_literal(line: str, path: Path, lineno: int) -> dict[str, Any]:
    """Strict JSON first; otherwise a Python literal via ``ast.literal_eval`` (never ``eval``)."""
    try:
        rec = _json_loads(line)
    except ValueError:
        try:
            rec = ast.literal_eval(line.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            what = e.msg if isinstance(e, SyntaxError) else (str(e) or type(e).__name__)
            raise DataFormatError(f"{path}:{lineno}: neither a JSON object nor a Python dict "
                                  f"literal ({what})") from None
    if not isinstance(rec, dict):
        raise DataFormatError(f"{path}:{lineno}: expected a JSON object or Python dict, got "
                              f"{type(rec).__name__}")
    return rec


def _missing(key: str, path: Path, lineno: int) -> DataFormatError:
    return DataFormatError(f"{path}:{lineno}: missing required key '{key}'")


def _check_id(rec: dict[str, Any], key: str, path: Path, lineno: int) -> str:
    """The slow path for an id field: report what is wrong, or convert an int to str."""
    if key not in rec:
        raise _missing(key, path, lineno)
    v = rec[key]
    if isinstance(v, str):
        if v:
            return v
        raise DataFormatError(f"{path}:{lineno}: '{key}' is an empty string")
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise DataFormatError(f"{path}:{lineno}: '{key}' must be a string, got "
                          f"{type(v).__name__} ({v!r:.40})")


def _check_time(rec: dict[str, Any], key: str, path: Path, lineno: int, divisor: int) -> int:
    """The slow path for a time field: accept integral values, numeric strings, finite floats."""
    if key not in rec:
        raise _missing(key, path, lineno)
    v = rec[key]
    t: int | None = None
    if isinstance(v, bool) or v is None:
        t = None
    elif isinstance(v, int):
        t = v
    elif isinstance(v, float) and math.isfinite(v):
        t = math.floor(v)
    elif isinstance(v, str) and re.fullmatch(r"\s*[+-]?\d+\s*", v):
        t = int(v)
    if t is None:
        raise DataFormatError(f"{path}:{lineno}: '{key}' must be an integer time, got "
                              f"{v!r:.40}")
    t //= divisor
    if not _INT64_MIN <= t <= _INT64_MAX:
        raise DataFormatError(f"{path}:{lineno}: '{key}' is out of range ({v!r:.40})")
    return t


def _check_rating(v: Any, key: str, path: Path, lineno: int) -> float:
    """The slow path for a rating: missing or null gives NaN; numbers and numeric strings pass."""
    if v is None:
        return math.nan
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise DataFormatError(f"{path}:{lineno}: '{key}' must be a number, got {v!r:.40}")


# --------------------------------------------------------------------------------------------
# Reviews
# --------------------------------------------------------------------------------------------


@dataclass
class _Reviews:
    users: list[str]
    items: list[str]
    times: list[int]
    ratings: list[float]
    parents: dict[str, str]  # 2023 with item_key="asin": asin -> parent_asin (first seen)


def _read_reviews(path: Path, parse: Callable[[str, Path, int], dict[str, Any]], *,
                  user_key: str, item_key: str, time_key: str, rating_key: str,
                  time_divisor: int = 1, parent_key: str | None = None) -> _Reviews:
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    ratings: list[float] = []
    parents: dict[str, str] = {}
    add_u, add_i, add_t, add_r = users.append, items.append, times.append, ratings.append
    nan = math.nan
    for lineno, line in iter_lines(path):
        rec = parse(line, path, lineno)
        # fast paths for well-formed values; anything unusual goes through the _check_* helpers
        u = rec.get(user_key)
        if type(u) is not str or not u:
            u = _check_id(rec, user_key, path, lineno)
        i = rec.get(item_key)
        if type(i) is not str or not i:
            i = _check_id(rec, item_key, path, lineno)
        t = rec.get(time_key)
        if type(t) is int and _INT64_MIN <= t <= _INT64_MAX:
            if time_divisor != 1:
                t //= time_divisor
        else:
            t = _check_time(rec, time_key, path, lineno, time_divisor)
        r = rec.get(rating_key, nan)
        tr = type(r)
        if tr is not float:
            r = float(r) if tr is int else _check_rating(r, rating_key, path, lineno)
        if parent_key is not None and i not in parents:
            p = rec.get(parent_key)
            if isinstance(p, str) and p:
                parents[i] = p
        add_u(u)
        add_i(i)
        add_t(t)
        add_r(r)
    return _Reviews(users, items, times, ratings, parents)


def _interactions_frame(rv: _Reviews) -> pd.DataFrame:
    return pd.DataFrame({
        "user": pd.Series(rv.users, dtype=object),
        "item": pd.Series(rv.items, dtype=object),
        "timestamp": pd.Series(np.array(rv.times, dtype=np.int64)),
        "rating": pd.Series(np.array(rv.ratings, dtype=np.float64)),
    })


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def _id_regex(key: str) -> re.Pattern[str]:
    """Match ``'key': 'value'`` or ``"key": "value"`` on a raw line (group 3 is the value)."""
    return re.compile(r"""(['"])""" + re.escape(key) + r"""\1\s*:\s*u?(['"])([^'"\\]*)\2""")


def _read_meta(path: Path, parse: Callable[[str, Path, int], dict[str, Any]], *,
               id_key: str, wanted: Iterable[str],
               fields: dict[str, Callable[[Any], Any] | None]) -> tuple[list[str], dict[str, list]]:
    """Parse the meta records of the ``wanted`` items, first record per item, in file order.

    ``fields`` maps each kept field to a converter (``None``: keep the value as it is). Missing
    fields become ``None``. Returns the item ids and one list per field.
    """
    pending = set(wanted)
    id_rx = _id_regex(id_key)
    ids: list[str] = []
    cols: dict[str, list] = {name: [] for name in fields}
    for lineno, line in iter_lines(path):
        if not pending:
            break
        # cheap pre-filter: skip the line unless one of its "id_key: value" pairs is wanted.
        # (finditer rather than search: a description could quote such a pair before the key.)
        seen_any = False
        hit = False
        for m in id_rx.finditer(line):
            seen_any = True
            if m.group(3) in pending:
                hit = True
                break
        if seen_any and not hit:
            continue
        rec = parse(line, path, lineno)
        item = rec.get(id_key)
        if type(item) is not str or not item:
            item = _check_id(rec, id_key, path, lineno)
        if item not in pending:  # not reviewed, or a duplicate record: the first one wins
            continue
        pending.discard(item)
        ids.append(item)
        for name, conv in fields.items():
            v = rec.get(name)
            if v is not None and conv is not None:
                v = conv(v)
            cols[name].append(v)
    return ids, cols


def _items_frame(ids: list[str], cols: dict[str, list]) -> pd.DataFrame:
    data = {"item": pd.Series(ids, dtype=object)}
    for name, values in cols.items():
        data[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(data)


def _json_text(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------

_FIELDS_2014: dict[str, Callable[[Any], Any] | None] = {
    "title": None, "brand": None, "categories": None, "description": None, "price": None,
}
_TEXT_2014 = ["title", "brand", "categories", "description"]

_FIELDS_2018: dict[str, Callable[[Any], Any] | None] = {
    "title": None, "brand": None, "feature": None, "description": None, "price": None,
    "date": None, "category": None, "main_cat": None,
}
_TEXT_2018 = ["title", "brand", "feature", "description", "category", "main_cat"]

_FIELDS_2023: dict[str, Callable[[Any], Any] | None] = {
    "title": None, "store": None, "features": None, "description": None, "categories": None,
    "main_category": None, "price": None, "details": _json_text,
}
_TEXT_2023 = ["title", "store", "features", "description", "categories", "main_category"]


def read_amazon2014(source: Path, items: Path | None = None) -> RawData:
    """Amazon Review Data 2014 (McAuley et al., SIGIR 2015).

    Files:
        ``source``: the reviews file ``reviews_<Category>.json.gz`` (or the 5-core
        ``reviews_<Category>_5.json.gz``, gzipped or plain), one JSON object per line with
        ``reviewerID, asin, reviewerName, helpful, reviewText, overall, summary,
        unixReviewTime, reviewTime``; or a directory holding exactly one such file.
        ``items``: the metadata file; by default ``meta_<Category>.json.gz`` (or ``.json``)
        next to the reviews file. Its lines are Python dict literals (``{'asin': ...}``, read
        with ``ast.literal_eval``, never executed) or, in some mirrors, JSON.

    Options: none.

    Output:
        interactions: ``user`` = reviewerID, ``item`` = asin, ``timestamp`` = unixReviewTime
        (int64 seconds), ``rating`` = overall (float64; NaN if absent), in file order.
        items: ``item`` (asin), ``title``, ``brand``, ``categories`` (list of category paths,
        each a list of str), ``description`` (str), ``price`` (float); a missing field is
        ``None``. Only reviewed items with a metadata record are listed (first record wins).
        text_fields: title, brand, categories, description.
    """
    reviews_path, meta_path = _find_files(source, items, _LAYOUT_2014, "2014")
    rv = _read_reviews(reviews_path, _parse_json_or_literal, user_key="reviewerID",
                       item_key="asin", time_key="unixReviewTime", rating_key="overall")
    ids, cols = _read_meta(meta_path, _parse_json_or_literal, id_key="asin",
                           wanted=rv.items, fields=_FIELDS_2014)
    return RawData(interactions=_interactions_frame(rv), items=_items_frame(ids, cols),
                   text_fields=list(_TEXT_2014), sources=[reviews_path, meta_path],
                   reader="amazon2014", options={})


def read_amazon2018(source: Path, items: Path | None = None) -> RawData:
    """Amazon Review Data 2018 (Ni, Li and McAuley, EMNLP 2019).

    Files:
        ``source``: the reviews file ``<Category>.json.gz`` (or the 5-core
        ``<Category>_5.json.gz``, gzipped or plain), one JSON object per line with
        ``overall, verified, reviewTime, reviewerID, asin, style, reviewerName, reviewText,
        summary, unixReviewTime, vote, image``; or a directory holding exactly one such file.
        ``items``: the metadata file; by default ``meta_<Category>.json.gz`` (or ``.json``)
        next to the reviews file, JSON lines with ``asin, title, feature, description, price,
        imageURL, also_buy, also_view, brand, category, main_cat, date, rank, details``. The
        release repeats some asins; the first record is kept.

    Options: none.

    Output:
        interactions: ``user`` = reviewerID, ``item`` = asin, ``timestamp`` = unixReviewTime
        (int64 seconds), ``rating`` = overall (float64; NaN if absent), in file order.
        items: ``item`` (asin), ``title``, ``brand``, ``feature`` (list of str),
        ``description`` (list of str), ``price`` (str as in the file, e.g. ``"$12.99"`` or
        ``""``), ``date`` (str), ``category`` (list of str), ``main_cat`` (str); a missing
        field is ``None``. Only reviewed items with a metadata record are listed.
        text_fields: title, brand, feature, description, category, main_cat.
    """
    reviews_path, meta_path = _find_files(source, items, _LAYOUT_2018, "2018")
    rv = _read_reviews(reviews_path, _parse_json, user_key="reviewerID", item_key="asin",
                       time_key="unixReviewTime", rating_key="overall")
    ids, cols = _read_meta(meta_path, _parse_json, id_key="asin", wanted=rv.items,
                           fields=_FIELDS_2018)
    return RawData(interactions=_interactions_frame(rv), items=_items_frame(ids, cols),
                   text_fields=list(_TEXT_2018), sources=[reviews_path, meta_path],
                   reader="amazon2018", options={})


def read_amazon2023(source: Path, items: Path | None = None, *,
                    item_key: str = "parent_asin") -> RawData:
    """Amazon Reviews 2023 (Hou et al., "Bridging Language and Items for Retrieval and
    Recommendation", 2024).

    Files:
        ``source``: the reviews file ``<Category>.jsonl`` (or ``.jsonl.gz``), JSON lines with
        ``rating, title, text, images, asin, parent_asin, user_id, timestamp (milliseconds),
        helpful_vote, verified_purchase``; or a directory holding exactly one such file.
        ``items``: the metadata file; by default ``meta_<Category>.jsonl(.gz)`` next to the
        reviews file (or in ``../meta_categories/``, the layout of the Hugging Face copy),
        JSON lines with ``main_category, title, average_rating, rating_number,
        features, description, price, images, videos, store, categories, details,
        parent_asin, bought_together``.

    Options:
        item_key: ``"parent_asin"`` (default, as the dataset authors recommend: product
        variants share one item) or ``"asin"`` (each variant is its own item; it gets the
        metadata of its parent_asin, taken from the reviews).

    Output:
        interactions: ``user`` = user_id, ``item`` = parent_asin or asin, ``timestamp`` =
        timestamp // 1000 (int64 seconds), ``rating`` = rating (float64; NaN if absent), in
        file order.
        items: ``item``, ``title``, ``store``, ``features`` (list of str), ``description``
        (list of str), ``categories`` (list of str), ``main_category``, ``price`` (number or
        None), ``details`` (the dict as a JSON string); a missing field is ``None``. Only
        reviewed items with a metadata record are listed.
        text_fields: title, store, features, description, categories, main_category.
    """
    if item_key not in ("parent_asin", "asin"):
        raise LlmesrError(f"amazon2023 option item_key must be 'parent_asin' or 'asin', "
                          f"not {item_key!r}")
    reviews_path, meta_path = _find_files(source, items, _LAYOUT_2023, "2023")
    by_asin = item_key == "asin"
    rv = _read_reviews(reviews_path, _parse_json, user_key="user_id", item_key=item_key,
                       time_key="timestamp", rating_key="rating", time_divisor=1000,
                       parent_key="parent_asin" if by_asin else None)
    if not by_asin:
        ids, cols = _read_meta(meta_path, _parse_json, id_key="parent_asin", wanted=rv.items,
                               fields=_FIELDS_2023)
    else:
        children: dict[str, list[str]] = {}
        for asin, parent in rv.parents.items():  # dict order = first appearance in the reviews
            children.setdefault(parent, []).append(asin)
        pids, pcols = _read_meta(meta_path, _parse_json, id_key="parent_asin",
                                 wanted=children, fields=_FIELDS_2023)
        ids = []
        cols = {name: [] for name in _FIELDS_2023}
        for row, parent in enumerate(pids):
            for k, asin in enumerate(children[parent]):
                ids.append(asin)
                for name in _FIELDS_2023:  # variants get their own copies of list values
                    v = pcols[name][row]
                    cols[name].append(v if k == 0 else copy.deepcopy(v))
    return RawData(interactions=_interactions_frame(rv), items=_items_frame(ids, cols),
                   text_fields=list(_TEXT_2023), sources=[reviews_path, meta_path],
                   reader="amazon2023", options={"item_key": item_key})
