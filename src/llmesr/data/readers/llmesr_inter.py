"""The original LLM-ESR interaction file: ``inter.txt``, one ``u i`` pair per line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from llmesr.data.io import iter_lines, require_file
from llmesr.data.readers.table import load_items
from llmesr.data.types import RawData, empty_items
from llmesr.errors import DataFormatError

_PAIR = re.compile(r"\s*(\d+)\s+(\d+)\s*")


def read_llmesr_inter(source: Path, items: Path | None = None, *, item_id_col: str = "item_id",
                      text_fields: str | None = None) -> RawData:
    """Read the LLM-ESR ``inter.txt``.

    Files:
        ``source``: one ``user item`` pair of positive integers per line, each user's lines
        contiguous and in chronological order (the file order is the time order; there are no
        timestamps). Repeated (user, item) pairs are kept as they are.
        ``items`` (optional): an items table (CSV/TSV/Parquet/JSON lines) with a column
        ``item_id_col`` holding the same integer ids, and text columns.

    Options: ``item_id_col`` (default ``item_id``), ``text_fields`` (comma-separated; default all
    string columns).
    """
    require_file(source, "interaction file")
    users: list[str] = []
    itms: list[str] = []
    for lineno, line in iter_lines(source):
        m = _PAIR.fullmatch(line)
        if m is None:
            raise DataFormatError(f"{source}:{lineno}: expected 'user item' (two positive "
                                  f"integers), got {line[:60]!r}")
        users.append(m.group(1))
        itms.append(m.group(2))
    inter = pd.DataFrame({"user": np.array(users, dtype=object),
                          "item": np.array(itms, dtype=object)})
    sources = [source]
    fields: list[str] = []
    table = empty_items()
    if items is not None:
        tf = None if text_fields is None else [t.strip() for t in text_fields.split(",")]
        table, fields = load_items(items, item_id_col, tf)
        unknown = ~table["item"].isin(set(itms))
        if unknown.any():
            raise DataFormatError(f"{items}: unknown item '{table['item'][unknown].iloc[0]}' "
                                  f"(not in {source.name})")
        sources.append(items)
    return RawData(interactions=inter, items=table, text_fields=fields, sources=sources,
                   reader="llmesr-inter",
                   options={"item_id_col": item_id_col, "text_fields": fields})
