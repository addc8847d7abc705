"""The dataset artifact: a directory every later stage reads.

Layout (``FORMAT_VERSION`` 1)::

    DIR/
      manifest.json       what made it: inputs + sha256, every setting, counts, thresholds,
                          group sizes, text coverage, file checksums (written last)
      items.parquet       item_id (1..N), raw_id, popularity, the source's text/attribute fields
      users.parquet       user_id (1..U), raw_id, length, test_history_len, evaluated,
                          tail_user, valid_item, test_item (0 = none)
      seq_offsets.npy     int64 (U + 1,): user u's history is seq_items[off[u-1]:off[u]]
      seq_items.npy       int32 (nnz,): item ids, each history in chronological order
      seq_timestamps.npy  int64 (nnz,) Unix seconds, only when the source has times
      seq_ratings.npy     float32 (nnz,), only when the source has ratings

Leave-one-out split (SPEC §1.5): for a user with n >= 3, train = the first n - 2 items, the
validation target is item n - 1 and the test target item n. Users with n < 3 train on their
whole history; with ``short_users=keep`` (the paper) they are still evaluated with their last
item as target. ``users.parquet`` spells this out so no stage re-derives it differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmesr.config import LongTailConfig, PrepareConfig, to_dict
from llmesr.data.io import (atomic_directory, provenance, recover_output, sha256_file,
                            write_json_atomic)
from llmesr.data.longtail import Groups, train_lengths
from llmesr.data.preprocess import Prepared
from llmesr.errors import LlmesrError

FORMAT_VERSION = 1
KIND = "llmesr-dataset"


def _has_text(value: Any) -> bool:
    """A field value counts as text when it is present and not empty ("", [], NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return len(value) > 0 if hasattr(value, "__len__") else True


def _parquet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Columns that mix types (e.g. numbers and strings) become strings so Parquet accepts them."""
    import pyarrow as pa

    out = table.copy()
    for col in out.columns:
        if out[col].dtype != object:
            continue
        try:
            pa.array(out[col].tolist(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            out[col] = [None if v is None else (v if isinstance(v, str) else json.dumps(v))
                        for v in out[col]]
    return out


def _as_str(values: Any) -> np.ndarray:
    """Ids as Python strings in an object array. (``ndarray.astype(str)`` would make a
    fixed-width array as wide as the longest id for every row.)"""
    return np.array([v if isinstance(v, str) else str(v) for v in list(values)], dtype=object)


def write_dataset(out: str | Path, prepared: Prepared, groups: Groups, *, name: str,
                  reader: str, reader_options: dict[str, Any], sources: list[Path],
                  prepare_config: PrepareConfig, longtail_config: LongTailConfig,
                  source_sha256: dict[str, str] | None = None, overwrite: bool = False,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the artifact atomically; return the manifest."""
    p = prepared
    lengths = p.lengths
    n_users, n_items, nnz = p.num_users, p.num_items, len(p.items)
    last = p.items[p.offsets[1:] - 1]
    has_valid = lengths >= 3
    valid_item = np.where(has_valid, p.items[np.maximum(p.offsets[1:] - 2, 0)], 0)
    test_item = np.where(p.evaluated, last, 0)
    tail_user = groups.tail_user()

    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype=np.int64),
        "raw_id": _as_str(p.user_raw),
        "length": lengths.astype(np.int64),
        "train_length": train_lengths(lengths).astype(np.int64),
        "test_history_len": groups.test_history_len.astype(np.int64),
        "evaluated": p.evaluated,
        "tail_user": tail_user,
        "valid_item": valid_item.astype(np.int64),
        "test_item": test_item.astype(np.int64),
    })
    items = p.item_table.copy()
    items["raw_id"] = _as_str(items["raw_id"])
    items.insert(2, "popularity", groups.popularity[1:])
    items.insert(3, "tail_item", groups.popularity[1:] < groups.ts_item)

    filled = {f: p.item_table[f].map(_has_text).to_numpy(dtype=bool) for f in p.text_fields}
    coverage = {f: int(v.sum()) for f, v in filled.items()}
    with_any = np.logical_or.reduce(list(filled.values())) if filled else np.zeros(n_items, bool)
    summary = groups.summary(last, p.evaluated)

    source_entries = []
    for s in sources:
        digest = (source_sha256 or {}).get(str(s)) or sha256_file(s)
        source_entries.append({"path": str(Path(s).resolve()), "bytes": Path(s).stat().st_size,
                               "sha256": digest})
    manifest: dict[str, Any] = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "name": name,
        **provenance(),
        "reader": {"name": reader, "options": reader_options},
        "sources": source_entries,
        "prepare": to_dict(prepare_config),
        "order_applied": p.order_applied,
        "longtail": to_dict(longtail_config),
        "split": {"scheme": "leave_one_out", "valid": "item n-1", "test": "item n",
                  "short_users": prepare_config.short_users},
        "counts": {
            "users": n_users, "items": n_items, "interactions": nnz,
            "evaluated_users": int(p.evaluated.sum()),
            "users_under_3": int((lengths < 3).sum()),
            "min_length": int(lengths.min()), "max_length": int(lengths.max()),
            "mean_length": round(float(lengths.mean()), 4),
            "sparsity": round(1.0 - nnz / (n_users * n_items), 6),
            "repeated_pairs": int(nnz - len(np.unique(
                np.repeat(np.arange(n_users, dtype=np.int64), lengths) * (n_items + 1)
                + p.items))),
            "has_timestamps": p.timestamps is not None,
            "has_ratings": p.ratings is not None,
        },
        "filter_log": p.log,
        "groups": summary,
        "text": {"fields": p.text_fields, "items_with_field": coverage,
                 "items_with_any_text": int(with_any.sum()),
                 "items_without_text": int(n_items - with_any.sum())},
    }
    if extra:
        manifest.update(extra)

    with atomic_directory(out, overwrite=overwrite) as tmp:
        np.save(tmp / "seq_offsets.npy", p.offsets.astype(np.int64))
        np.save(tmp / "seq_items.npy", p.items.astype(np.int32))
        if p.timestamps is not None:
            np.save(tmp / "seq_timestamps.npy", p.timestamps.astype(np.int64))
        if p.ratings is not None:
            np.save(tmp / "seq_ratings.npy", p.ratings.astype(np.float32))
        users.to_parquet(tmp / "users.parquet", index=False)
        _parquet_safe(items).to_parquet(tmp / "items.parquet", index=False)
        manifest["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


@dataclass
class SequenceDataset:
    """A loaded dataset artifact (see the module docstring for the files)."""

    path: Path
    manifest: dict[str, Any]
    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None
    ratings: np.ndarray | None

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return int(self.manifest["counts"]["items"])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def has_repeats(self) -> bool:
        """Whether some user has the same item more than once (a repeat interaction)."""
        if len(self.items) < 2:
            return False
        user = np.repeat(np.arange(self.num_users, dtype=np.int64), self.lengths)
        pairs = user * (int(self.items.max()) + 1) + self.items.astype(np.int64)
        return bool(len(np.unique(pairs)) < len(pairs))

    def sequence(self, user_id: int) -> np.ndarray:
        """Full history of user ``user_id`` (1-based)."""
        return self.items[self.offsets[user_id - 1]:self.offsets[user_id]]

    def _parquet(self, name: str) -> pd.DataFrame:
        f = self.path / name
        try:
            return pd.read_parquet(f)
        except (OSError, ValueError) as e:   # pyarrow's ArrowInvalid is a ValueError
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LlmesrError(f"{f} is corrupt or unreadable ({msg}); prepare the dataset "
                              "again") from None

    @cached_property
    def users(self) -> pd.DataFrame:
        return self._parquet("users.parquet")

    @cached_property
    def item_table(self) -> pd.DataFrame:
        return self._parquet("items.parquet")

    @property
    def ts_user(self) -> int:
        return int(self.manifest["groups"]["ts_user"])

    @property
    def ts_item(self) -> int:
        return int(self.manifest["groups"]["ts_item"])


#: manifest entries every later stage reads, with their JSON types
_MANIFEST_KEYS: dict[str, type] = {"name": str, "reader": dict, "counts": dict, "groups": dict,
                                   "text": dict, "files": dict}


def load_dataset(path: str | Path, verify: bool = False) -> SequenceDataset:
    """Load an artifact; ``verify=True`` also checks every file's sha256 against the manifest."""
    root = Path(path)
    mpath = root / "manifest.json"
    if root.parent.is_dir():
        recover_output(root)       # a kill in the middle of 'prepare --overwrite' is repaired
    if not root.is_dir():
        raise LlmesrError(f"dataset directory not found: {root}")
    if not mpath.is_file():
        raise LlmesrError(f"{root} is not a prepared dataset (no manifest.json); run "
                          "'llmesr prepare' first")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlmesrError(f"{mpath} is corrupt ({e}); prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise LlmesrError(f"{mpath} does not describe an llmesr dataset")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LlmesrError(f"{root} has dataset format {manifest.get('format_version')}, this "
                          f"llmesr reads {FORMAT_VERSION}; prepare it again")
    missing = [k for k, kind in _MANIFEST_KEYS.items() if not isinstance(manifest.get(k), kind)]
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    missing += [f"counts.{k}" for k in ("users", "items") if not isinstance(counts.get(k), int)]
    if missing:
        raise LlmesrError(f"{mpath} is incomplete or damaged (no valid {', '.join(missing)}); "
                          "prepare the dataset again")
    files = manifest.get("files", {})
    for fname, digest in files.items():
        f = root / fname
        if not f.is_file():
            raise LlmesrError(f"{root}: {fname} is missing; prepare the dataset again")
        if verify and sha256_file(f) != digest:
            raise LlmesrError(f"{f} does not match its checksum in manifest.json (modified or "
                              "corrupt); prepare the dataset again")

    def arr(name: str) -> np.ndarray | None:
        f = root / name
        if not f.exists():
            return None
        try:
            return np.load(f, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise LlmesrError(f"{f} is corrupt ({e}); prepare the dataset again") from None

    offsets, items = arr("seq_offsets.npy"), arr("seq_items.npy")
    if offsets is None or items is None:
        raise LlmesrError(f"{root}: seq_offsets.npy or seq_items.npy is missing; prepare again")
    if offsets[-1] != len(items) or len(offsets) - 1 != manifest["counts"]["users"]:
        raise LlmesrError(f"{root}: sequence arrays do not match the manifest; prepare again")
    return SequenceDataset(path=root, manifest=manifest, offsets=offsets, items=items,
                           timestamps=arr("seq_timestamps.npy"), ratings=arr("seq_ratings.npy"))
