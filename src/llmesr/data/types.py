"""The one structure every reader returns.

A reader turns files in some source format into :class:`RawData`: a table of interactions in
file order and a table of items with their text. Everything after that (filtering, id mapping,
splitting, long-tail groups) is format-independent and lives in :mod:`llmesr.data.preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from llmesr.errors import DataFormatError, EmptyResultError

#: Columns an interactions table may carry. ``user`` and ``item`` are required raw ids (strings);
#: ``timestamp`` is integer Unix seconds; ``rating`` is a float.
INTERACTION_COLUMNS = ("user", "item", "timestamp", "rating")
#: Longest raw id accepted (longer ones are whole lines read as one field: a wrong separator
#: or an open quote).
MAX_ID_CHARS = 1000
#: Largest accepted Unix time in seconds (about 330 years from 1970): beyond it, and for inf,
#: a "timestamp" would become a garbage integer.
MAX_SECONDS = 10_413_792_000


@dataclass
class RawData:
    """What a reader produces.

    Attributes:
        interactions: one row per interaction in source-file order, columns ``user`` and ``item``
            (raw ids as ``str``) and optionally ``timestamp`` (``int64`` Unix seconds) and
            ``rating`` (``float64``). Row order is meaningful: it breaks timestamp ties and is
            the chronological order when there are no timestamps.
        items: one row per known item, column ``item`` (raw id, ``str``, unique) plus text or
            attribute fields. Values may be strings, numbers, lists of strings or ``None``.
        text_fields: names of the ``items`` columns that describe the item in words (used for
            prompts). Every name must be a column of ``items``.
        sources: the files that were read, in the order read (their sha256 go in the manifest).
        reader: the reader's name (``"s3rec"``, ``"amazon2014"``, ...).
        options: the reader's settings, recorded in the manifest.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    text_fields: list[str]
    sources: list[Path]
    reader: str
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "RawData":
        """Check the contract; raise a :class:`DataFormatError` naming what is wrong."""
        inter = self.interactions
        for col in ("user", "item"):
            if col not in inter.columns:
                raise DataFormatError(f"{self.reader} reader produced no '{col}' column")
        unknown = [c for c in inter.columns if c not in INTERACTION_COLUMNS]
        if unknown:
            raise DataFormatError(f"{self.reader} reader produced unexpected columns {unknown}")
        if len(inter) == 0:
            src = ", ".join(str(s) for s in self.sources) or "the input"
            raise EmptyResultError(f"no interactions were read from {src}")
        for col in ("user", "item"):
            if inter[col].isna().any():
                row = int(inter[col].isna().to_numpy().nonzero()[0][0])
                raise DataFormatError(f"interaction #{row + 1} has no {col} id")
            try:
                lengths = inter[col].astype(object).str.len()
            except AttributeError:      # not strings at all (e.g. integer ids): short enough
                lengths = pd.Series(0, index=inter.index)
            lengths = lengths.fillna(0).to_numpy(dtype="int64")
            if lengths.max() > MAX_ID_CHARS:
                row = int(lengths.argmax())
                src = ", ".join(str(s) for s in self.sources) or "the input"
                raise DataFormatError(f"interaction #{row + 1} of {src}: the {col} id is "
                                      f"{lengths[row]:,} characters long (at most "
                                      f"{MAX_ID_CHARS:,}); is the file in the right format?")
        if "item" not in self.items.columns:
            raise DataFormatError(f"{self.reader} reader produced an item table without 'item'")
        if self.items["item"].duplicated().any():
            dup = self.items.loc[self.items["item"].duplicated(), "item"].iloc[0]
            raise DataFormatError(f"item '{dup}' appears more than once in the item table")
        missing = [f for f in self.text_fields if f not in self.items.columns]
        if missing:
            raise DataFormatError(f"text field(s) {missing} are not columns of the item table "
                                  f"(columns: {[c for c in self.items.columns if c != 'item']})")
        return self


def empty_items() -> pd.DataFrame:
    """An item table with no rows and no text (for sources without item text)."""
    return pd.DataFrame({"item": pd.Series([], dtype=object)})
