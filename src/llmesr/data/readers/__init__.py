"""Readers: one per source format, each returning :class:`llmesr.data.types.RawData`.

Every reader has the signature ``read(source, items=None, **options) -> RawData``:

- ``source``: the main input (a file, or a directory in which the reader finds its files);
- ``items``: the item-text / metadata file when it is not found from ``source``;
- ``options``: reader-specific keyword settings (documented in each reader's docstring; from the
  CLI they are given as ``-o key=value``). Unknown options raise an error.

Readers only parse: no filtering, no id mapping, no sorting. They report malformed input with
the file name and line number.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmesr.data.types import RawData
from llmesr.errors import LlmesrError


@dataclass(frozen=True)
class ReaderSpec:
    name: str
    target: str  # "module:function" inside llmesr.data.readers, imported on first use
    summary: str

    @property
    def func(self) -> Callable[..., RawData]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(f"llmesr.data.readers.{module}"), attr)

    def options(self) -> list[str]:
        sig = inspect.signature(self.func)
        return [p.name for p in sig.parameters.values()
                if p.kind == p.KEYWORD_ONLY]

    def __call__(self, source: str | Path, items: str | Path | None = None,
                 **options: Any) -> RawData:
        allowed = self.options()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise LlmesrError(f"reader '{self.name}' has no option(s) {unknown}; "
                              f"its options are: {', '.join(allowed) or 'none'}")
        raw = self.func(Path(source), None if items is None else Path(items), **options)
        return raw.validate()


def _registry() -> dict[str, ReaderSpec]:
    specs = [
        ReaderSpec("s3rec", "s3rec:read_s3rec",
                   "S3-Rec/SASRec sequence file ('uid i1 i2 ...' lines) plus an item-text file"),
        ReaderSpec("llmesr-inter", "llmesr_inter:read_llmesr_inter",
                   "the original LLM-ESR inter.txt ('u i' per line, grouped by user, in order)"),
        ReaderSpec("recbole", "recbole:read_recbole",
                   "RecBole atomic files (.inter, .item, .user) with typed headers"),
        ReaderSpec("table", "table:read_table",
                   "any CSV/TSV/Parquet/JSON-lines interactions file plus an items file"),
        ReaderSpec("amazon2014", "amazon:read_amazon2014",
                   "Amazon Review Data 2014: reviews_*.json.gz + meta_*.json.gz"),
        ReaderSpec("amazon2018", "amazon:read_amazon2018",
                   "Amazon Review Data 2018: <Category>.json.gz + meta_<Category>.json.gz"),
        ReaderSpec("amazon2023", "amazon:read_amazon2023",
                   "Amazon Reviews 2023: <Category>.jsonl(.gz) + meta_<Category>.jsonl(.gz)"),
        ReaderSpec("yelp", "yelp:read_yelp",
                   "Yelp Open Dataset: yelp_academic_dataset_review.json + ..._business.json"),
        ReaderSpec("movielens-100k", "movielens:read_movielens_100k",
                   "MovieLens 100K archive folder (u.data + u.item)"),
        ReaderSpec("movielens-1m", "movielens:read_movielens_1m",
                   "MovieLens 1M archive folder (ratings.dat + movies.dat)"),
    ]
    return {s.name: s for s in specs}


def get_reader(name: str) -> ReaderSpec:
    readers = _registry()
    if name not in readers:
        raise LlmesrError(f"unknown format '{name}'; known formats: {', '.join(readers)}")
    return readers[name]


def reader_names() -> list[str]:
    return list(_registry())
