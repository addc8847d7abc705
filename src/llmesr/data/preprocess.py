"""From raw interactions to contiguous ids, chronological histories and a leave-one-out split.

Everything here is vectorised (pandas/NumPy); nothing loops over interactions in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from llmesr.config import PrepareConfig
from llmesr.data.types import RawData
from llmesr.errors import EmptyResultError, LlmesrError


@dataclass
class Prepared:
    """Users' histories in CSR form with 1-based contiguous ids (0 is padding downstream).

    Attributes:
        user_raw: (U,) raw id of user ``u`` at index ``u - 1``.
        item_raw: (N,) raw id of item ``i`` at index ``i - 1``.
        offsets: (U + 1,) int64; user ``u``'s history is ``items[offsets[u-1]:offsets[u]]``.
        items: (nnz,) int32 item ids, each history in chronological order.
        timestamps / ratings: (nnz,) aligned with ``items`` when the source has them.
        item_table: one row per item in id order: ``item_id``, ``raw_id`` and the text fields.
        text_fields: names of the descriptive columns of ``item_table``.
        evaluated: (U,) bool, whether the user has a test case (see ``short_users``).
        log: counts after each step, for the manifest.
        order_applied: the chronological order actually used.
    """

    user_raw: np.ndarray
    item_raw: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None
    ratings: np.ndarray | None
    item_table: pd.DataFrame
    text_fields: list[str]
    evaluated: np.ndarray
    log: list[dict[str, Any]] = field(default_factory=list)
    order_applied: str = "timestamp"

    @property
    def num_users(self) -> int:
        return len(self.user_raw)

    @property
    def num_items(self) -> int:
        return len(self.item_raw)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _counts(df: pd.DataFrame) -> dict[str, int]:
    return {"users": int(df["user"].nunique()), "items": int(df["item"].nunique()),
            "interactions": int(len(df))}


def _to_seconds(text: str, name: str) -> int:
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise LlmesrError(f"{name} {text!r} is not a date or date-time (use e.g. 2019-12-31 or "
                          "'2019-12-31 00:00:00')") from None
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.timestamp())


def _kcore(df: pd.DataFrame, cfg: PrepareConfig, log: list[dict[str, Any]]) -> pd.DataFrame:
    ku, ki = cfg.kcore_user, cfg.kcore_item
    if cfg.kcore_mode == "single":
        if ku or ki:
            # One pass: both counts are taken on the data *before* this filter (paper code).
            ucount = df["user"].map(df["user"].value_counts())
            icount = df["item"].map(df["item"].value_counts())
            df = df[(ucount >= ku).to_numpy() & (icount >= ki).to_numpy()]
            log.append({"step": f"k-core single pass (users>={ku}, items>={ki})", **_counts(df)})
        if cfg.min_history:
            ucount = df["user"].map(df["user"].value_counts())
            df = df[(ucount >= cfg.min_history).to_numpy()]
            log.append({"step": f"min_history >= {cfg.min_history}", **_counts(df)})
        return df
    ku = max(ku, cfg.min_history)
    if not ku and not ki:
        return df
    rounds = 0
    while True:
        ucount = df["user"].map(df["user"].value_counts())
        icount = df["item"].map(df["item"].value_counts())
        keep = (ucount >= ku).to_numpy() & (icount >= ki).to_numpy()
        if keep.all():
            break
        df = df[keep]
        rounds += 1
    log.append({"step": f"k-core until stable (users>={ku}, items>={ki}; {rounds} rounds)",
                **_counts(df)})
    return df


def _rank_numeric(values: np.ndarray, what: str) -> np.ndarray:
    as_num = pd.to_numeric(pd.Series(values), errors="coerce")
    if as_num.isna().any():
        bad = values[as_num.isna().to_numpy()][0]
        raise LlmesrError(f"id_order=source needs numeric {what} ids, got {bad!r}; use "
                          "id_order=first_appearance")
    return np.argsort(as_num.to_numpy(), kind="stable")


def preprocess(raw: RawData, cfg: PrepareConfig) -> Prepared:
    """Apply ``cfg`` to ``raw`` (see :class:`PrepareConfig` for each step and its order)."""
    cfg.validate()
    df = raw.interactions.copy()
    df["user"] = df["user"].astype(object)
    df["item"] = df["item"].astype(object)
    df["_row"] = np.arange(len(df), dtype=np.int64)  # file order, the final tie-breaker
    log: list[dict[str, Any]] = [{"step": "read", **_counts(df)}]
    has_time = "timestamp" in df.columns

    def check(step: str) -> None:
        if len(df) == 0:
            trail = "; ".join(f"{e['step']}: {e['interactions']}" for e in log)
            raise EmptyResultError(f"no interactions left after {step} ({trail}); loosen the "
                                   "filters")

    if cfg.min_rating is not None:
        if "rating" not in df.columns:
            raise LlmesrError("min_rating is set but the source has no ratings")
        df = df[df["rating"].to_numpy() >= cfg.min_rating]
        log.append({"step": f"rating >= {cfg.min_rating}", **_counts(df)})
        check("the rating filter")
    if cfg.date_start is not None or cfg.date_end is not None:
        if not has_time:
            raise LlmesrError("a date window is set but the source has no timestamps")
        ts = df["timestamp"].to_numpy()
        keep = np.ones(len(df), dtype=bool)
        if cfg.date_start is not None:
            keep &= ts >= _to_seconds(cfg.date_start, "date_start")
        if cfg.date_end is not None:
            keep &= ts <= _to_seconds(cfg.date_end, "date_end")
        df = df[keep]
        log.append({"step": f"date in [{cfg.date_start}, {cfg.date_end}]", **_counts(df)})
        check("the date window")

    order_applied = cfg.order
    if cfg.order == "timestamp" and not has_time:
        order_applied = "file (the source has no timestamps)"
    if cfg.order == "timestamp" and has_time:
        # Stable: equal timestamps keep their file order.
        df = df.sort_values("timestamp", kind="stable")

    if cfg.duplicates != "keep":
        df = df[~df.duplicated(["user", "item"], keep=cfg.duplicates)]
        log.append({"step": f"duplicates: keep {cfg.duplicates}", **_counts(df)})

    df = _kcore(df, cfg, log)
    check("the k-core filter")
    if cfg.short_users == "drop":
        ucount = df["user"].map(df["user"].value_counts())
        df = df[(ucount >= 3).to_numpy()]
        log.append({"step": "drop users with < 3 interactions", **_counts(df)})
        check("dropping users with fewer than 3 interactions")

    # ---- ids -------------------------------------------------------------------------------
    user_codes, user_uniques = pd.factorize(df["user"].to_numpy(), sort=False)
    first_row = np.full(len(user_uniques), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_row, user_codes, df["_row"].to_numpy())
    if cfg.id_order == "source":
        user_perm = _rank_numeric(user_uniques, "user")
    else:
        user_perm = np.argsort(first_row, kind="stable")  # first appearance in the file
    user_rank = np.empty(len(user_uniques), dtype=np.int64)
    user_rank[user_perm] = np.arange(len(user_uniques))
    df = df.assign(_uid=user_rank[user_codes])
    # Group by user keeping each history's chronological order (the frame is time-sorted).
    df = df.sort_values("_uid", kind="stable")
    if cfg.id_order == "first_appearance":
        item_uniques = pd.unique(df["item"].to_numpy())
    elif cfg.id_order == "file":
        item_uniques = pd.unique(df.sort_values("_row", kind="stable")["item"].to_numpy())
    else:
        uniq = pd.unique(df["item"].to_numpy())
        item_uniques = uniq[_rank_numeric(uniq, "item")]
    item_index = pd.Index(item_uniques)
    item_ids = item_index.get_indexer(df["item"].to_numpy()).astype(np.int32) + 1

    n_users = len(user_uniques)
    lengths = np.bincount(df["_uid"].to_numpy(), minlength=n_users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    user_raw = np.asarray(user_uniques, dtype=object)[user_perm]
    item_raw = np.asarray(item_uniques, dtype=object)

    # ---- item table in id order ------------------------------------------------------------
    table = pd.DataFrame({"item_id": np.arange(1, len(item_raw) + 1, dtype=np.int64),
                          "raw_id": item_raw})
    info = raw.items
    if len(info.columns) > 1:
        info = info.set_index("item")
        joined = info.reindex(pd.Index(item_raw, dtype=object))
        for col in info.columns:
            values = joined[col].to_numpy(dtype=object, copy=True)
            values[pd.isna(joined[col]).to_numpy()] = None
            table[col] = pd.Series(values, dtype=object, index=table.index)

    evaluated = np.ones(n_users, dtype=bool)
    if cfg.short_users == "no_eval":
        evaluated = lengths >= 3
    log.append({"step": "final", "users": n_users, "items": len(item_raw),
                "interactions": int(len(df))})
    return Prepared(
        user_raw=user_raw, item_raw=item_raw, offsets=offsets, items=item_ids,
        timestamps=df["timestamp"].to_numpy(dtype=np.int64) if has_time else None,
        ratings=df["rating"].to_numpy(dtype=np.float32) if "rating" in df.columns else None,
        item_table=table, text_fields=list(raw.text_fields), evaluated=evaluated, log=log,
        order_applied=order_applied)
