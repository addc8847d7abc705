"""Hold items out of a prepared dataset, to test cold start on real data.

:func:`hold_out_items` picks ``n`` items that are some user's test target, removes *every*
interaction with them, and writes the rest as a new dataset artifact (same format, same
settings; ids renumbered). A model trained on it has never seen the held-out items. Beside
the artifact it writes what is needed to add them back and to score them::

    OUT/held_out/items.parquet   the held-out items' rows of the original item table
                                 (raw_id, text fields, original popularity and tail flag)
    OUT/held_out/cases.parquet   one row per user whose test target is a held-out item:
                                 user raw_id, the raw ids of the items before the target
                                 (held-out ones included), the target's raw id

The cases keep the user's real history: once the held-out items are added by text, those
that appear in a history are known again (:mod:`llmesr.serving.coldstart`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmesr.config import LongTailConfig, PrepareConfig
from llmesr.data.artifact import load_dataset, write_dataset
from llmesr.data.io import atomic_directory, sha256_file
from llmesr.data.longtail import compute_groups
from llmesr.data.preprocess import Prepared
from llmesr.errors import LlmesrError


def hold_out_items(data_dir: str | Path, out: str | Path, n: int = 200, seed: int = 0, *,
                   overwrite: bool = False, log=print) -> dict[str, Any]:
    """Write ``data_dir`` without ``n`` random test-target items to ``out``; return its
    manifest (see the module docstring)."""
    ds = load_dataset(data_dir)
    users = ds.users
    evaluated = users["evaluated"].to_numpy()
    targets = users["test_item"].to_numpy()
    pool = np.unique(targets[evaluated & (targets > 0)])
    if n < 1 or n > len(pool) // 2:
        raise LlmesrError(f"can hold out 1 to {len(pool) // 2} items of {data_dir} (half of the "
                          f"{len(pool)} items that are a test target), not {n}")
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(pool, size=n, replace=False))
    is_held = np.zeros(ds.num_items + 1, dtype=bool)
    is_held[held] = True

    # ---- the reduced sequences ------------------------------------------------------------
    row_of = np.repeat(np.arange(ds.num_users), ds.lengths)
    keep = ~is_held[ds.items]
    lengths = np.bincount(row_of[keep], minlength=ds.num_users)
    kept_users = lengths > 0
    new_id = np.zeros(ds.num_items + 1, dtype=np.int32)
    new_id[~is_held] = np.arange(ds.num_items + 1 - n, dtype=np.int32)   # 0 stays 0
    offsets = np.zeros(int(kept_users.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[kept_users], out=offsets[1:])
    table = ds.item_table
    text_fields = list(ds.manifest["text"]["fields"])
    item_table = table.loc[~is_held[1:], ["item_id", "raw_id", *text_fields]].reset_index(
        drop=True)
    item_table["item_id"] = np.arange(1, len(item_table) + 1, dtype=np.int64)
    prep_cfg = PrepareConfig(**ds.manifest["prepare"])
    new_lengths = lengths[kept_users]
    evaluated_new = (new_lengths >= 3) if prep_cfg.short_users == "no_eval" else \
        np.ones(len(new_lengths), dtype=bool)
    prepared = Prepared(
        user_raw=users["raw_id"].to_numpy(dtype=object)[kept_users],
        item_raw=item_table["raw_id"].to_numpy(dtype=object),
        offsets=offsets, items=new_id[ds.items[keep]],
        timestamps=None if ds.timestamps is None else ds.timestamps[keep],
        ratings=None if ds.ratings is None else ds.ratings[keep],
        item_table=item_table, text_fields=text_fields, evaluated=evaluated_new,
        log=[*ds.manifest.get("filter_log", []),
             {"step": f"hold out {n} test-target items (seed {seed})",
              "users": int(kept_users.sum()), "items": ds.num_items - n,
              "interactions": int(keep.sum())}],
        order_applied=ds.manifest.get("order_applied", "file"))
    lt = LongTailConfig(**ds.manifest["longtail"])
    # the original thresholds, so that head and tail mean the same thing in both datasets
    groups = compute_groups(offsets, prepared.items, prepared.num_items, evaluated_new, lt,
                            (ds.ts_user, ds.ts_item))

    # ---- the held-out test cases: users whose test target is held out --------------------
    case_rows = np.flatnonzero(evaluated & is_held[targets])
    raw_items = table["raw_id"].to_numpy(dtype=object)
    histories = [raw_items[ds.sequence(int(u) + 1)[:-1] - 1].tolist() for u in case_rows]
    cases = pd.DataFrame({"user": users["raw_id"].to_numpy(dtype=object)[case_rows],
                          "history": histories,
                          "target": raw_items[targets[case_rows] - 1]})
    held_rows = table.loc[is_held[1:]].reset_index(drop=True)

    src = Path(data_dir)
    manifest = write_dataset(
        out, prepared, groups, name=f"{ds.manifest['name']}-holdout{n}",
        reader=ds.manifest["reader"]["name"], reader_options=ds.manifest["reader"]["options"],
        sources=[src / "manifest.json"], prepare_config=prep_cfg, longtail_config=lt,
        overwrite=overwrite,
        extra={"derived_from": {"path": str(src.resolve()), "name": ds.manifest["name"],
                                "manifest_sha256": sha256_file(src / "manifest.json")},
               "held_out": {"items": n, "seed": seed, "test_cases": len(cases),
                            "tail_items": int(held_rows["tail_item"].sum()),
                            "users_dropped": int((~kept_users).sum())}})
    with atomic_directory(Path(out) / "held_out") as tmp:
        held_rows.to_parquet(tmp / "items.parquet", index=False)
        cases.to_parquet(tmp / "cases.parquet", index=False)
    log(f"held out {n} items ({int(held_rows['tail_item'].sum())} tail) with {len(cases)} test "
        f"cases; wrote {out}")
    return manifest


def load_held_out(data_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(held-out item rows, test cases) written by :func:`hold_out_items`."""
    folder = Path(data_dir) / "held_out"
    if not (folder / "items.parquet").is_file() or not (folder / "cases.parquet").is_file():
        raise LlmesrError(f"{data_dir} has no held-out items (made by hold_out_items)")
    return pd.read_parquet(folder / "items.parquet"), pd.read_parquet(folder / "cases.parquet")
