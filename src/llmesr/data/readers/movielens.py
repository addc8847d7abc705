"""Readers for the GroupLens MovieLens archives (ml-100k and ml-1m, as downloaded)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from llmesr.data.io import iter_lines, require_file
from llmesr.data.readers.recbole import split_table_fast
from llmesr.data.types import MAX_SECONDS, RawData
from llmesr.errors import DataFormatError, LlmesrError

#: The 19 genres of ml-100k's ``u.item`` flags, in column order (used when ``u.genre`` is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)

_RATING_COLUMNS = ("user", "item", "rating", "timestamp")


def _locate(source: Path, data_name: str, item_name: str, items: Path | None,
            what: str) -> tuple[Path, Path]:
    """(ratings file, item file) from a folder or ratings-file ``source`` and optional ``items``."""
    if source.is_dir():
        ratings = source / data_name
        if not ratings.is_file():
            raise LlmesrError(f"{what} ratings file not found: {ratings} (pass the {what} folder "
                              f"or its {data_name})")
    else:
        ratings = require_file(source, f"{what} ratings file")
    if items is None:
        item_path = ratings.parent / item_name
        if not item_path.is_file():
            raise LlmesrError(f"{what} item file not found: {item_path} (pass it with --items)")
    else:
        item_path = require_file(items, f"{what} item file")
    return ratings, item_path


def _parse_ratings_slow(path: Path, sep: str, encoding: str) -> pd.DataFrame:
    """Line-by-line ratings parser: the reference semantics, naming the first bad line."""
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    times: list[int] = []
    for lineno, line in iter_lines(path, encoding):
        parts = line.split(sep)
        if len(parts) != 4:
            raise DataFormatError(f"{path}:{lineno}: expected 4 fields (user, item, rating, "
                                  f"timestamp) separated by {sep!r}, found {len(parts)}")
        user, item, rating, ts = parts
        if not user.strip() or not item.strip():
            raise DataFormatError(f"{path}:{lineno}: empty {'user' if not user.strip() else 'item'}"
                                  " id")
        try:
            r = float(rating)
            if not math.isfinite(r):
                raise ValueError
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: rating {rating!r} is not a number") from None
        try:
            t = int(ts)
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: timestamp {ts[:60]!r} is not an integer "
                                  "(Unix seconds)") from None
        if abs(t) > MAX_SECONDS:
            raise DataFormatError(f"{path}:{lineno}: timestamp {ts[:60]!r} is not a Unix time "
                                  "in seconds (more than 330 years from 1970)")
        users.append(user)
        items.append(item)
        ratings.append(r)
        times.append(t)
    return pd.DataFrame({
        "user": pd.Series(users, dtype=str),
        "item": pd.Series(items, dtype=str),
        "timestamp": pd.Series(times, dtype="int64"),
        "rating": pd.Series(ratings, dtype="float64"),
    })


def _parse_ratings(path: Path, sep: str, encoding: str) -> pd.DataFrame:
    """Ratings ``user<sep>item<sep>rating<sep>timestamp`` → interactions, in file order.

    Vectorised with pandas; anything unexpected (bad field counts, non-numbers, undecodable
    bytes, compressed input) falls back to :func:`_parse_ratings_slow`, which names the line.
    """
    data = path.read_bytes()
    table = None
    if data[:2] != b"\x1f\x8b":
        fast_sep = sep
        if len(sep) > 1:  # e.g. "::": the C parser only takes one character
            if b"\t" in data:
                data = b""
            else:
                data = data.replace(sep.encode(encoding), b"\t")
                fast_sep = "\t"
        if data:
            table = split_table_fast(data, fast_sep, 4, encoding,
                                     dtype={2: "float64", 3: "int64"})
    if table is not None:
        table.columns = list(_RATING_COLUMNS)
        rating = table["rating"].to_numpy(dtype="float64")
        ts = table["timestamp"].to_numpy(dtype="int64")
        user_ok = (table["user"].str.strip() != "").all()
        item_ok = (table["item"].str.strip() != "").all()
        if not (user_ok and item_ok and np.isfinite(rating).all()
                and (np.abs(ts) <= MAX_SECONDS).all()):
            table = None
    if table is None:
        return _parse_ratings_slow(path, sep, encoding)
    return pd.DataFrame({
        "user": table["user"], "item": table["item"],
        "timestamp": pd.Series(ts, dtype="int64"), "rating": pd.Series(rating, dtype="float64"),
    }).reset_index(drop=True)


def _read_genre_names(path: Path, encoding: str) -> list[str]:
    by_index: dict[int, str] = {}
    for lineno, line in iter_lines(path, encoding):
        name, bar, idx = line.rpartition("|")
        if not bar or not name:
            raise DataFormatError(f"{path}:{lineno}: expected 'genre name|index', got {line!r}")
        try:
            k = int(idx)
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: genre index {idx!r} is not an integer") \
                from None
        if k in by_index:
            raise DataFormatError(f"{path}:{lineno}: genre index {k} appears twice")
        by_index[k] = name
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise DataFormatError(f"{path}: genre indices must be 0, 1, 2, ... without gaps; "
                              f"found {sorted(by_index)}")
    return [by_index[k] for k in range(len(by_index))]


def _new_item(path: Path, lineno: int, item: str, seen: dict[str, int]) -> None:
    if not item.strip():
        raise DataFormatError(f"{path}:{lineno}: empty movie id")
    if item in seen:
        raise DataFormatError(f"{path}:{lineno}: movie id {item} appears again "
                              f"(first on line {seen[item]})")
    seen[item] = lineno


def read_movielens_100k(source: Path, items: Path | None = None, *,
                        encoding: str = "latin-1") -> RawData:
    """Read the GroupLens MovieLens 100K archive (``ml-100k`` folder).

    Files:
        ``source`` is the ``ml-100k`` folder or its ``u.data`` file: tab-separated
        ``user id, item id, rating, timestamp``. ``items`` is ``u.item`` (default: next to
        ``u.data``): pipe-separated ``movie id | title | release date | video release date |
        IMDb URL | 19 genre flags (0/1)``. Genre names come from ``u.genre`` (``name|index``)
        next to ``u.item`` when present, else the fixed ml-100k list (unknown, Action, ...,
        Western).

    Options:
        encoding: text encoding of the files (default ``latin-1``, which the archive uses).

    Output:
        interactions: ``user``, ``item`` (str ids), ``timestamp`` (int64 Unix seconds),
            ``rating`` (float64), in file order.
        items: ``item``, ``title`` (as given, e.g. ``"Toy Story (1995)"``), ``genres`` (list of
            genre names whose flag is 1), ``release_date`` (e.g. ``"01-Jan-1995"``; ``None`` when
            empty). Text fields: ``title``, ``genres``.
    """
    data_path, item_path = _locate(Path(source), "u.data", "u.item", items, "MovieLens 100K")
    interactions = _parse_ratings(data_path, "\t", encoding)
    sources = [data_path, item_path]

    genre_path = item_path.parent / "u.genre"
    if genre_path.is_file():
        genres = _read_genre_names(genre_path, encoding)
        sources.append(genre_path)
    else:
        genres = list(ML100K_GENRES)

    ids: list[str] = []
    titles: list[str] = []
    genre_lists: list[list[str]] = []
    dates: list[str | None] = []
    seen: dict[str, int] = {}
    nfields = 5 + len(genres)
    for lineno, line in iter_lines(item_path, encoding):
        parts = line.split("|")
        if len(parts) != nfields:
            raise DataFormatError(
                f"{item_path}:{lineno}: expected {nfields} '|'-separated fields (movie id, title, "
                f"release date, video release date, IMDb URL and {len(genres)} genre flags), "
                f"found {len(parts)}")
        item = parts[0]
        _new_item(item_path, lineno, item, seen)
        flags = parts[5:]
        bad = [f for f in flags if f not in ("0", "1")]
        if bad:
            raise DataFormatError(f"{item_path}:{lineno}: genre flags must be 0 or 1, found "
                                  f"{bad[0]!r}")
        ids.append(item)
        titles.append(parts[1])
        dates.append(parts[2] or None)
        genre_lists.append([g for g, f in zip(genres, flags) if f == "1"])
    items_df = pd.DataFrame({
        "item": pd.Series(ids, dtype=str),
        "title": pd.Series(titles, dtype=object),
        "genres": pd.Series(genre_lists, dtype=object),
        "release_date": pd.Series(dates, dtype=object),
    })
    return RawData(interactions=interactions, items=items_df, text_fields=["title", "genres"],
                   sources=sources, reader="movielens-100k", options={"encoding": encoding})


def read_movielens_1m(source: Path, items: Path | None = None, *,
                      encoding: str = "latin-1") -> RawData:
    """Read the GroupLens MovieLens 1M archive (``ml-1m`` folder).

    Files:
        ``source`` is the ``ml-1m`` folder or its ``ratings.dat``:
        ``UserID::MovieID::Rating::Timestamp``. ``items`` is ``movies.dat`` (default: next to
        ``ratings.dat``): ``MovieID::Title::Genres`` with genres ``|``-separated. The same layout
        is used by ml-10m (``(no genres listed)`` becomes an empty list).

    Options:
        encoding: text encoding of the files (default ``latin-1``, which the archive uses).

    Output:
        interactions: ``user``, ``item`` (str ids), ``timestamp`` (int64 Unix seconds),
            ``rating`` (float64), in file order.
        items: ``item``, ``title`` (as given, e.g. ``"Toy Story (1995)"``), ``genres`` (list of
            str). Text fields: ``title``, ``genres``.
    """
    data_path, item_path = _locate(Path(source), "ratings.dat", "movies.dat", items,
                                   "MovieLens 1M")
    interactions = _parse_ratings(data_path, "::", encoding)

    ids: list[str] = []
    titles: list[str] = []
    genre_lists: list[list[str]] = []
    seen: dict[str, int] = {}
    for lineno, line in iter_lines(item_path, encoding):
        item, sep1, rest = line.partition("::")
        title, sep2, genre_text = rest.rpartition("::")
        if not sep1 or not sep2:
            raise DataFormatError(f"{item_path}:{lineno}: expected 'MovieID::Title::Genres', "
                                  f"got {line!r}")
        _new_item(item_path, lineno, item, seen)
        ids.append(item)
        titles.append(title)
        genre_lists.append([g.strip() for g in genre_text.split("|")
                            if g.strip() and g.strip() != "(no genres listed)"])
    items_df = pd.DataFrame({
        "item": pd.Series(ids, dtype=str),
        "title": pd.Series(titles, dtype=object),
        "genres": pd.Series(genre_lists, dtype=object),
    })
    return RawData(interactions=interactions, items=items_df, text_fields=["title", "genres"],
                   sources=[data_path, item_path], reader="movielens-1m",
                   options={"encoding": encoding})
