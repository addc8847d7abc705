"""Reader for RecBole atomic files (``<name>.inter``, ``<name>.item``).

Also home of :func:`split_table_fast`, the vectorised "bytes → table of strings" step shared with
the MovieLens reader: it parses with pandas' C engine and returns ``None`` whenever anything looks
off, so the caller can fall back to a line-by-line parser that names the offending line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmesr.data.io import iter_lines, require_file
from llmesr.data.types import MAX_SECONDS, RawData, empty_items
from llmesr.errors import DataFormatError, LlmesrError

#: Field types of RecBole's atomic-file headers (``name:type``).
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def split_table_fast(data: bytes, sep: str, ncols: int, encoding: str,
                     dtype: dict[int, str] | None = None) -> pd.DataFrame | None:
    """Split ``data`` (the body of a delimited file, no header) into ``ncols`` string columns.

    Uses pandas' C parser with quoting off, so every character is taken literally. Returns
    ``None`` (meaning "parse it line by line instead") when pandas fails, when a line has the
    wrong number of fields, when a column given in ``dtype`` (column index → numpy dtype) does
    not convert, or when the text cannot be decoded. Blank lines are skipped. Columns are named
    ``0 .. ncols-1``; those not in ``dtype`` are strings.
    """
    if len(sep) != 1:
        return None
    if not data.strip():
        return pd.DataFrame({i: pd.Series([], dtype=str) for i in range(ncols)})
    try:
        types: dict[int, Any] = {i: str for i in range(ncols)}
        types.update(dtype or {})
        df = pd.read_csv(io.BytesIO(data), sep=sep, header=None, names=list(range(ncols)),
                         dtype=types, na_filter=False, quoting=csv.QUOTE_NONE, engine="c",
                         encoding=encoding, skip_blank_lines=True, index_col=False)
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError, pd.errors.ParserError):
        return None
    # pandas raises on lines with too many fields but pads lines with too few; since no line
    # has more than ncols fields, the total separator count is right only if every line is.
    if data.count(sep.encode(encoding)) != (ncols - 1) * len(df):
        return None
    return df


def _decode_sep(sep: str) -> str:
    # From the CLI, "-o sep=\t" arrives as a backslash and a 't'.
    return {"\\t": "\t", "tab": "\t", "\\s": " ", "space": " "}.get(sep, sep)


def _parse_header(path: Path, line: str, lineno: int, sep: str) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for raw in line.split(sep):
        name, colon, ftype = raw.strip().rpartition(":")
        if not colon or not name:
            raise DataFormatError(
                f"{path}:{lineno}: header field '{raw}' has no type; RecBole atomic files need a "
                f"typed header such as 'user_id:token{sep}item_id:token' "
                f"(types: {', '.join(RECBOLE_TYPES)})")
        if ftype not in RECBOLE_TYPES:
            raise DataFormatError(f"{path}:{lineno}: header field '{raw}' has unknown type "
                                  f"'{ftype}' (known types: {', '.join(RECBOLE_TYPES)})")
        if any(name == n for n, _ in fields):
            raise DataFormatError(f"{path}:{lineno}: header names field '{name}' twice")
        fields.append((name, ftype))
    return fields


def _read_atomic(path: Path, sep: str) -> tuple[list[tuple[str, str]], pd.DataFrame, int]:
    """Read one atomic file: its typed header and a table of strings named by field.

    Returns (fields, table, header line number). Lines with the wrong number of fields raise
    :class:`DataFormatError` with the line number.
    """
    lines = iter_lines(path)
    try:
        header_no, header = next(lines)
    except StopIteration:
        raise DataFormatError(f"{path}: file is empty (expected a typed header line)") from None
    fields = _parse_header(path, header, header_no, sep)
    names = [n for n, _ in fields]

    table = None
    if header_no == 1:
        data = Path(path).read_bytes()
        cut = data.find(b"\n")
        if cut >= 0 and data[:2] != b"\x1f\x8b":
            table = split_table_fast(data[cut + 1:], sep, len(names), "utf-8")
    if table is None:  # slow path: line by line, naming the first bad line
        rows: list[list[str]] = []
        for lineno, line in lines:
            parts = line.split(sep)
            if len(parts) != len(names):
                raise DataFormatError(f"{path}:{lineno}: expected {len(names)} fields "
                                      f"({', '.join(names)}) separated by {sep!r}, "
                                      f"found {len(parts)}")
            rows.append(parts)
        table = pd.DataFrame(rows, columns=list(range(len(names))), dtype=str) if rows else \
            pd.DataFrame({i: pd.Series([], dtype=str) for i in range(len(names))})
    else:
        lines.close()
    table.columns = names
    return fields, table, header_no


def _line_of(path: Path, row: int, header_no: int) -> int:
    """Line number of data row ``row`` (0-based) of an atomic file, counting as pandas did."""
    for k, (lineno, _) in enumerate(iter_lines(path)):
        if k == row + 1:  # the header is the first non-blank line
            return lineno
    return header_no + row + 1


def _numeric(path: Path, col: pd.Series, name: str, header_no: int) -> np.ndarray:
    try:
        values = col.astype("float64").to_numpy()
    except (ValueError, TypeError):  # locate the bad value
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(bad.nonzero()[0][0])
        raise DataFormatError(f"{path}:{_line_of(path, row, header_no)}: field '{name}' is "
                              f"{col.iloc[row]!r}, not a finite number")
    return values


def _find_inter(source: Path) -> Path:
    if source.is_dir():
        found = sorted(p for p in source.iterdir() if p.suffix == ".inter" and p.is_file())
        if len(found) != 1:
            what = ", ".join(p.name for p in found) if found else "none"
            raise LlmesrError(f"expected exactly one <name>.inter file in {source}, found: "
                              f"{what} (pass the .inter file itself as the source)")
        return found[0]
    return require_file(source, "RecBole .inter file")


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def read_recbole(source: Path, items: Path | None = None, *,
                 user_field: str = "user_id",
                 item_field: str = "item_id",
                 time_field: str | None = "timestamp",
                 rating_field: str | None = "rating",
                 text_fields: str | Sequence[str] | None = None,
                 sep: str = "\t") -> RawData:
    """Read RecBole atomic files.

    Files:
        ``source`` is a directory holding exactly one ``<name>.inter`` file, or that file itself.
        ``items`` is the item file; by default the sibling ``<name>.item`` (if it does not exist
        the item table is empty and there are no text fields). A ``<name>.user`` file, if
        present, is ignored (user features are not used). Files are UTF-8, ``sep``-separated,
        with a typed header line ``name:type`` per column, type one of ``token``,
        ``token_seq``, ``float``, ``float_seq``.

    Options:
        user_field: ``.inter`` column with the user id (default ``user_id``).
        item_field: column with the item id in ``.inter`` and ``.item`` (default ``item_id``).
        time_field: ``.inter`` column with the Unix time (default ``timestamp``); used if present.
            Fractional seconds are floored. Give an empty string to ignore timestamps.
        rating_field: ``.inter`` column with the rating (default ``rating``); used if present.
            Give an empty string to ignore ratings.
        text_fields: ``.item`` columns that describe the item, comma-separated or a list
            (default: every ``token``/``token_seq`` column other than the item id).
        sep: field separator (default tab; ``\\t`` is accepted for a tab).

    Output:
        interactions: ``user``, ``item`` (str), ``timestamp`` (int64, if present), ``rating``
            (float64, if present), in file order.
        items: ``item`` plus every other ``.item`` column under its own name, values as the
            strings in the file (a ``token_seq`` stays space-joined, e.g. ml-100k's ``class`` is
            ``"Animation Children's Comedy"``); empty values become ``None``.

    Raises:
        DataFormatError: an untyped or unknown-typed header, a missing user/item field, a line
            with the wrong number of fields, an empty id or a non-numeric time/rating.
    """
    sep = _decode_sep(sep)
    if not sep:
        raise LlmesrError("option sep must not be empty")
    inter_path = _find_inter(Path(source))
    name = inter_path.name[:-len(".inter")] if inter_path.name.endswith(".inter") \
        else inter_path.stem
    if items is None:
        item_path: Path | None = inter_path.with_name(f"{name}.item")
        if not item_path.is_file():
            item_path = None
    else:
        item_path = require_file(items, "RecBole .item file")

    fields, table, header_no = _read_atomic(inter_path, sep)
    names = [n for n, _ in fields]
    for what, f in (("user", user_field), ("item", item_field)):
        if f not in names:
            raise DataFormatError(f"{inter_path}: no {what} field '{f}' in the header; its fields "
                                  f"are {names} (set the {what}_field option)")
    inter = {"user": table[user_field], "item": table[item_field]}
    for col in ("user", "item"):
        empty = (inter[col].str.strip() == "").to_numpy()
        if empty.any():
            row = int(empty.nonzero()[0][0])
            raise DataFormatError(f"{inter_path}:{_line_of(inter_path, row, header_no)}: "
                                  f"empty {col} id")

    used: dict[str, str | None] = {}
    for opt, f, default in (("time_field", time_field, "timestamp"),
                            ("rating_field", rating_field, "rating")):
        if f and f not in names and f != default:
            raise DataFormatError(f"{inter_path}: no field '{f}' (option {opt}) in the header; "
                                  f"its fields are {names}")
        used[opt] = f if f and f in names else None
    if used["time_field"]:
        ts = _numeric(inter_path, table[used["time_field"]], used["time_field"], header_no)
        far = np.abs(ts) > MAX_SECONDS
        if far.any():
            row = int(far.nonzero()[0][0])
            value = str(table[used["time_field"]].iloc[row])[:60]
            raise DataFormatError(f"{inter_path}:{_line_of(inter_path, row, header_no)}: field "
                                  f"'{used['time_field']}' is {value!r}, not a Unix time in "
                                  "seconds (more than 330 years from 1970)")
        inter["timestamp"] = pd.Series(np.floor(ts).astype("int64"))
    if used["rating_field"]:
        inter["rating"] = pd.Series(_numeric(inter_path, table[used["rating_field"]],
                                             used["rating_field"], header_no))
    interactions = pd.DataFrame(inter).reset_index(drop=True)
    sources = [inter_path]

    if item_path is not None:
        ifields, itable, iheader_no = _read_atomic(item_path, sep)
        inames = [n for n, _ in ifields]
        if item_field not in inames:
            raise DataFormatError(f"{item_path}: no item field '{item_field}' in the header; its "
                                  f"fields are {inames} (set the item_field option)")
        dup = itable[item_field].duplicated().to_numpy()
        if dup.any():
            row = int(dup.nonzero()[0][0])
            raise DataFormatError(f"{item_path}:{_line_of(item_path, row, iheader_no)}: item "
                                  f"'{itable[item_field].iloc[row]}' appears more than once")
        cols = {"item": itable[item_field]}
        for n in inames:
            if n != item_field:
                cols[n] = itable[n].astype(object).where(itable[n] != "", None)
        items_df = pd.DataFrame(cols).reset_index(drop=True)
        default_text = [n for n, t in ifields if n != item_field and t in ("token", "token_seq")]
        sources.append(item_path)
    else:
        items_df = empty_items()
        inames, default_text = [], []

    chosen = _as_list(text_fields)
    if chosen is None:
        chosen = default_text
    else:
        missing = [f for f in chosen if f not in inames or f == item_field]
        if missing:
            where = str(item_path) if item_path else "the item table (there is no .item file)"
            raise LlmesrError(f"text field(s) {missing} are not columns of {where}; columns: "
                              f"{[n for n in inames if n != item_field]}")

    return RawData(interactions=interactions, items=items_df, text_fields=list(chosen),
                   sources=sources, reader="recbole",
                   options={"user_field": user_field, "item_field": item_field,
                            "time_field": used["time_field"],
                            "rating_field": used["rating_field"],
                            "text_fields": list(chosen), "sep": sep})

