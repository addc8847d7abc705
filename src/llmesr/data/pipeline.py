"""``prepare``: read a source, filter, split, group and write the dataset artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmesr.config import LongTailConfig, PrepareConfig, with_overrides
from llmesr.data.artifact import write_dataset
from llmesr.data.longtail import compute_groups
from llmesr.data.preprocess import preprocess
from llmesr.data.readers import get_reader, reader_names
from llmesr.data.registry import ENTRIES, get_entry, resolve_files
from llmesr.data.types import RawData
from llmesr.errors import LlmesrError


def prepare(name: str, out: str | Path, *, source: str | Path | None = None,
            items: str | Path | None = None, reader_options: dict[str, Any] | None = None,
            settings: dict[str, Any] | None = None, longtail: dict[str, Any] | None = None,
            overwrite: bool = False, log=print) -> dict[str, Any]:
    """Prepare dataset ``name`` (a registered dataset or a format name) into directory ``out``.

    Args:
        name: a registry entry (``beauty-s3rec``, ``ml-100k``, ...) or a reader format
            (``table``, ``recbole``, ``amazon2014``, ...).
        source / items: input paths (for registry entries ``source`` is their folder and is
            optional for local snapshots).
        reader_options: extra reader options (``-o key=value``).
        settings: :class:`PrepareConfig` overrides.
        longtail: :class:`LongTailConfig` overrides (``ts_user``, ``ts_item``, ``popularity``...).

    Returns the manifest. Raises :class:`LlmesrError` for any problem with the input; in that
    case nothing is left at ``out``.
    """
    t0 = time.perf_counter()
    if Path(out).exists() and not overwrite:  # fail before any reading
        raise LlmesrError(f"output directory already exists: {out} (pass --overwrite to "
                          "replace it)")
    entry = get_entry(name)
    options = dict(reader_options or {})
    digests: dict[str, str] = {}
    if entry is not None:
        reader = get_reader(entry.reader)
        paths, digests = resolve_files(entry, source)
        src = paths.pop("source")
        items_path = paths.pop("items", None)
        if items is not None:
            items_path = Path(items)
        options = {**entry.reader_options, **{k: str(v) for k, v in paths.items()}, **options}
        base_cfg = with_overrides(PrepareConfig(), entry.prepare)
        paper_ts = entry.paper_thresholds
    else:
        if name not in reader_names():
            raise LlmesrError(f"unknown dataset or format '{name}'; datasets: "
                              f"{', '.join(ENTRIES)}; formats: {', '.join(reader_names())}")
        if source is None:
            raise LlmesrError(f"format '{name}' needs --source PATH")
        reader = get_reader(name)
        src, items_path = Path(source), None if items is None else Path(items)
        base_cfg = PrepareConfig()
        paper_ts = None
    cfg = with_overrides(base_cfg, settings or {}).validate()
    lt_cfg = with_overrides(LongTailConfig(), longtail or {}).validate()

    log(f"reading {src} with the '{reader.name}' reader ...")
    raw = reader(src, items_path, **options)
    t_read = time.perf_counter() - t0
    if entry is not None and entry.require_text:
        # Every sequence item must have text; report the first that does not.
        known = set(raw.items["item"]) if len(raw.items) else set()
        missing = raw.interactions.loc[~raw.interactions["item"].isin(known), "item"]
        if len(missing):
            raise LlmesrError(f"{entry.name}: {missing.nunique()} item(s) have no text, e.g. "
                              f"item '{missing.iloc[0]}'; the item-text file does not match")
    manifest = prepare_raw(raw, out, name=name, settings=cfg, longtail=lt_cfg,
                           paper_thresholds=paper_ts, source_sha256=digests,
                           overwrite=overwrite, extra={"timing_seconds": {
                               "read": round(t_read, 3),
                               "total": round(time.perf_counter() - t0, 3)}})
    c = manifest["counts"]
    log(f"wrote {out}: {c['users']:,} users, {c['items']:,} items, {c['interactions']:,} "
        f"interactions in {time.perf_counter() - t0:.1f} s")
    return manifest


def prepare_raw(raw: RawData, out: str | Path, *, name: str, settings: PrepareConfig,
                longtail: LongTailConfig, paper_thresholds: tuple[int, int] | None = None,
                source_sha256: dict[str, str] | None = None, overwrite: bool = False,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Filter, split and group what a reader (or :meth:`llmesr.Dataset.from_frames`) produced,
    and write the dataset artifact to ``out``; return its manifest. ``settings`` and
    ``longtail`` are validated configs."""
    prepared = preprocess(raw, settings)
    groups = compute_groups(prepared.offsets, prepared.items, prepared.num_items,
                            prepared.evaluated, longtail, paper_thresholds)
    return write_dataset(
        out, prepared, groups, name=name, reader=raw.reader, reader_options=raw.options,
        sources=raw.sources, prepare_config=settings, longtail_config=longtail,
        source_sha256=source_sha256, overwrite=overwrite, extra=extra)
