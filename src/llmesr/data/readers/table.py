"""Generic tables: any CSV / TSV / Parquet / JSON-lines interactions file plus an items file."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmesr.data.io import iter_lines, require_file
from llmesr.data.types import MAX_ID_CHARS, MAX_SECONDS, RawData, empty_items
from llmesr.errors import DataFormatError, LlmesrError

_FORMATS = ("csv", "tsv", "parquet", "jsonl")


def detect_format(path: Path) -> str:
    """Guess a table format from the file name (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``...)."""
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".tsv", ".tab", ".txt")):
        return "tsv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise LlmesrError(f"cannot tell the format of {path} from its name; pass -o format=csv|tsv|"
                      "parquet|jsonl")


def _read_jsonl(path: Path) -> pd.DataFrame:
    """JSON lines, one object per line, checked line by line (errors name file:line)."""
    records: list[dict[str, Any]] = []
    for lineno, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e.msg} at column "
                                  f"{e.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno}: expected a JSON object (one record per "
                                  f"line, e.g. {{\"user_id\": ..., \"item_id\": ...}}), got "
                                  f"{'a list' if isinstance(obj, list) else type(obj).__name__}")
        records.append(obj)
    if not records:
        return pd.DataFrame()
    return pd.DataFrame.from_records(records)


def _header_fields(path: Path, sep: str) -> list[str]:
    """The header line of a CSV/TSV file split as pandas splits it (quotes honoured)."""
    import csv

    for _lineno, line in iter_lines(path):
        return next(csv.reader([line], delimiter=sep)) if len(sep) == 1 else line.split(sep)
    return []


def _check_header(path: Path, sep: str) -> None:
    """Refuse a header that names a column twice (pandas would rename the second one
    ``name.1`` and the first would be used silently)."""
    seen: dict[str, int] = {}
    for k, name in enumerate(_header_fields(path, sep), 1):
        key = name.strip()
        if key in seen:
            raise DataFormatError(f"{path}:1: the header names column '{key}' twice (columns "
                                  f"{seen[key]} and {k}); rename one of them")
        seen[key] = k


def load_table(path: Path, fmt: str = "auto", sep: str | None = None) -> pd.DataFrame:
    """Load a whole table with every column as read (ids are later cast to ``str``)."""
    require_file(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in _FORMATS:
        raise LlmesrError(f"unknown table format '{fmt}'; use one of {', '.join(_FORMATS)}")
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
            dup = df.columns[df.columns.duplicated()]
            if len(dup):
                raise DataFormatError(f"{path}: column '{dup[0]}' appears twice")
            return df
        if fmt == "jsonl":
            return _read_jsonl(path)
        sep = sep or ("," if fmt == "csv" else "\t")
        _check_header(path, sep)
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except DataFormatError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(f"{path}: cannot read the compressed data ({e}); the file is "
                              "probably truncated or corrupt") from None
    except (ValueError, pd.errors.ParserError, OSError, UnicodeDecodeError,
            MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFormatError(f"{path}: cannot be read as {fmt}: {msg}") from None


def _check_columns(df: pd.DataFrame, path: Path, wanted: dict[str, str | None]) -> None:
    for role, col in wanted.items():
        if col is not None and col not in df.columns:
            raise DataFormatError(f"{path}: missing column '{col}' (the {role} column); "
                                  f"columns present: {', '.join(map(str, df.columns))}")


def _row_label(path: Path, fmt: str, row: int) -> str:
    # CSV/TSV have a header line, so data row r (0-based) is line r + 2; JSON lines: r + 1.
    if fmt in ("csv", "tsv"):
        return f"{path}:{row + 2}"
    if fmt == "jsonl":
        return f"{path}:{row + 1}"
    return f"{path} row {row + 1}"


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: quoted, and cut short when long."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} chars)"


def _ids(series: pd.Series, path: Path, fmt: str, what: str) -> np.ndarray:
    bad = series.isna().to_numpy()
    if bad.any():
        row = int(bad.nonzero()[0][0])
        raise DataFormatError(f"{_row_label(path, fmt, row)}: empty {what}")
    if series.dtype.kind == "f":  # ids that pandas read as floats: 12.0 -> "12"
        vals = series.to_numpy()
        if np.all(np.mod(vals, 1) == 0):
            series = pd.Series(vals.astype(np.int64), index=series.index)
    # Python strings, one object per value: a NumPy "<U" array would be as wide as the
    # longest id for every row (one 5 MB field in 100,000 rows asks for 2 TB).
    out = np.array([v if isinstance(v, str) else str(v) for v in series.tolist()],
                   dtype=object)
    lengths = np.fromiter((len(v) for v in out), dtype=np.int64, count=len(out))
    if len(out) and lengths.max() > MAX_ID_CHARS:
        row = int(lengths.argmax())
        raise DataFormatError(f"{_row_label(path, fmt, row)}: the {what} is "
                              f"{lengths[row]:,} characters long (at most {MAX_ID_CHARS:,}); "
                              "is the separator right, or is a quote left open?")
    return out


def parse_times(series: pd.Series, path: Path, fmt: str, unit: str = "auto") -> np.ndarray:
    """Times to int64 Unix seconds. ``unit``: auto | s | ms | iso (date strings)."""
    if unit not in ("auto", "s", "ms", "iso"):
        raise LlmesrError(f"unknown time_unit '{unit}'; use auto, s, ms or iso")
    if series.isna().any():
        row = int(series.isna().to_numpy().nonzero()[0][0])
        raise DataFormatError(f"{_row_label(path, fmt, row)}: empty timestamp")
    if len(series) == 0:
        return np.zeros(0, dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(series):  # e.g. a Parquet timestamp column
        dt = series if series.dt.tz is not None else series.dt.tz_localize("UTC")
        return dt.dt.as_unit("s").astype("int64").to_numpy()
    if unit != "iso":
        num = pd.to_numeric(series, errors="coerce")
        if not num.isna().any():
            values = num.to_numpy(dtype=np.float64)
            # Unix times beyond year ~2300 (or inf) are not times: they would become garbage
            # integers. Milliseconds are divided first.
            ms = unit == "ms" or (unit == "auto" and np.isfinite(values).all()
                                  and np.abs(values).max() > 1e11
                                  and np.abs(values).max() <= MAX_SECONDS * 1000)
            if ms:
                values = values / 1000.0  # millisecond epochs (e.g. Amazon 2023)
            bad = ~(np.abs(values) <= MAX_SECONDS)      # also catches inf and nan
            if bad.any():
                row = int(bad.nonzero()[0][0])
                raise DataFormatError(
                    f"{_row_label(path, fmt, row)}: timestamp {_show(series.iloc[row])} is not "
                    f"a Unix time in {'milli' if ms else ''}seconds: it is infinite or more "
                    "than 330 years from 1970")
            return np.floor(values).astype(np.int64)
        if unit in ("s", "ms"):
            row = int(num.isna().to_numpy().nonzero()[0][0])
            raise DataFormatError(f"{_row_label(path, fmt, row)}: timestamp "
                                  f"{_show(series.iloc[row])} is not a number")
    dt = pd.to_datetime(series.astype(str), errors="coerce", utc=True, format="mixed")
    if dt.isna().any():
        row = int(dt.isna().to_numpy().nonzero()[0][0])
        raise DataFormatError(f"{_row_label(path, fmt, row)}: cannot parse timestamp "
                              f"{_show(series.iloc[row])}")
    return (dt.dt.as_unit("s").astype("int64")).to_numpy()


def load_items(path: Path, item_id_col: str, text_fields: list[str] | None, fmt: str = "auto",
               sep: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Load an items table: returns (items with an ``item`` column, the text field names)."""
    fmt_used = detect_format(path) if fmt == "auto" else fmt
    df = load_table(path, fmt, sep)
    _check_columns(df, path, {"item id": item_id_col})
    if text_fields is None:
        text_fields = [c for c in df.columns if c != item_id_col
                       and (df[c].dtype == object or pd.api.types.is_string_dtype(df[c]))]
    _check_columns(df, path, {f"text field {f!r}": f for f in text_fields})
    out = df.rename(columns={item_id_col: "item"}).copy()
    out["item"] = _ids(out["item"], path, fmt_used, "item id")
    dup = out["item"].duplicated()
    if dup.any():
        row = int(dup.to_numpy().nonzero()[0][0])
        raise DataFormatError(f"{_row_label(path, fmt_used, row)}: item '{out['item'].iloc[row]}' "
                              "appears twice in the items file")
    out = out.astype({c: object for c in out.columns})
    out = out.where(out.notna(), None)
    return out.reset_index(drop=True), list(text_fields)


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def read_table(source: Path, items: Path | None = None, *, user_col: str = "user_id",
               item_col: str = "item_id", time_col: str | None = None,
               rating_col: str | None = None, item_id_col: str | None = None,
               text_fields: str | list[str] | None = None, format: str = "auto",
               items_format: str = "auto", sep: str | None = None,
               time_unit: str = "auto") -> RawData:
    """Read an interactions table and (optionally) an items table.

    Files: ``source`` is a CSV, TSV, Parquet or JSON-lines file (format from the extension or
    ``format``) with one interaction per row; ``items`` an optional table with one row per item.

    Options:
        user_col, item_col: id columns of the interactions table (defaults ``user_id``, ``item_id``).
        time_col: optional time column: Unix seconds, milliseconds (detected, or
            ``time_unit=ms``) or date strings (``time_unit=iso``).
        rating_col: optional rating column (numbers).
        item_id_col: item id column of the items table (default: ``item_col``).
        text_fields: items columns that describe the item (comma-separated); default: all
            string columns except the id.
        format / items_format: ``auto``, ``csv``, ``tsv``, ``parquet`` or ``jsonl``.
        sep: field separator for CSV/TSV when not ``,`` / tab.

    Output: interactions ``user``, ``item`` (str), ``timestamp`` (int64 s), ``rating``
    (float64) in file order; items ``item`` plus the chosen columns.
    """
    fmt = detect_format(source) if format == "auto" else format
    df = load_table(source, fmt, sep)
    _check_columns(df, source, {"user": user_col, "item": item_col, "time": time_col,
                                "rating": rating_col})
    inter = pd.DataFrame({"user": _ids(df[user_col], source, fmt, "user id"),
                          "item": _ids(df[item_col], source, fmt, "item id")})
    if time_col is not None:
        inter["timestamp"] = parse_times(df[time_col], source, fmt, time_unit)
    if rating_col is not None:
        rating = pd.to_numeric(df[rating_col], errors="coerce")
        if rating.isna().any():
            row = int(rating.isna().to_numpy().nonzero()[0][0])
            raise DataFormatError(f"{_row_label(source, fmt, row)}: rating "
                                  f"'{df[rating_col].iloc[row]}' is not a number")
        inter["rating"] = rating.to_numpy(dtype=np.float64)
    sources = [source]
    fields: list[str] = []
    if items is not None:
        item_table, fields = load_items(items, item_id_col or item_col, _as_list(text_fields),
                                        items_format, sep)
        sources.append(items)
    else:
        if text_fields:
            raise LlmesrError("text_fields were given but no items file (--items)")
        item_table = empty_items()
    return RawData(interactions=inter, items=item_table, text_fields=fields, sources=sources,
                   reader="table",
                   options={"user_col": user_col, "item_col": item_col, "time_col": time_col,
                            "rating_col": rating_col, "item_id_col": item_id_col or item_col,
                            "text_fields": fields, "format": fmt, "sep": sep,
                            "time_unit": time_unit})
