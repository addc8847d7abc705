"""Generic tables: any CSV / TSV / Parquet / JSON-lines interactions file plus an items file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmesr.data.io import require_file
from llmesr.data.types import RawData, empty_items
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


def load_table(path: Path, fmt: str = "auto", sep: str | None = None) -> pd.DataFrame:
    """Load a whole table with every column as read (ids are later cast to ``str``)."""
    require_file(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in _FORMATS:
        raise LlmesrError(f"unknown table format '{fmt}'; use one of {', '.join(_FORMATS)}")
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_csv(path, sep=sep or ("," if fmt == "csv" else "\t"), dtype=str,
                           keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError, OSError, UnicodeDecodeError) as e:
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


def _ids(series: pd.Series, path: Path, fmt: str, what: str) -> np.ndarray:
    bad = series.isna().to_numpy()
    if bad.any():
        row = int(bad.nonzero()[0][0])
        raise DataFormatError(f"{_row_label(path, fmt, row)}: empty {what}")
    vals = series.to_numpy()
    if series.dtype.kind == "f":  # ids that pandas read as floats: 12.0 -> "12"
        if np.all(np.mod(vals, 1) == 0):
            vals = vals.astype(np.int64)
    return vals.astype(str).astype(object)


def parse_times(series: pd.Series, path: Path, fmt: str, unit: str = "auto") -> np.ndarray:
    """Times to int64 Unix seconds. ``unit``: auto | s | ms | iso (date strings)."""
    if unit not in ("auto", "s", "ms", "iso"):
        raise LlmesrError(f"unknown time_unit '{unit}'; use auto, s, ms or iso")
    if series.isna().any():
        row = int(series.isna().to_numpy().nonzero()[0][0])
        raise DataFormatError(f"{_row_label(path, fmt, row)}: empty timestamp")
    if unit != "iso":
        num = pd.to_numeric(series, errors="coerce")
        if not num.isna().any():
            values = num.to_numpy(dtype=np.float64)
            if unit == "ms" or (unit == "auto" and np.nanmax(np.abs(values)) > 1e11):
                values = values / 1000.0  # millisecond epochs (e.g. Amazon 2023)
            return np.floor(values).astype(np.int64)
        if unit in ("s", "ms"):
            row = int(num.isna().to_numpy().nonzero()[0][0])
            raise DataFormatError(f"{_row_label(path, fmt, row)}: timestamp "
                                  f"'{series.iloc[row]}' is not a number")
    dt = pd.to_datetime(series.astype(str), errors="coerce", utc=True, format="mixed")
    if dt.isna().any():
        row = int(dt.isna().to_numpy().nonzero()[0][0])
        raise DataFormatError(f"{_row_label(path, fmt, row)}: cannot parse timestamp "
                              f"'{series.iloc[row]}'")
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
