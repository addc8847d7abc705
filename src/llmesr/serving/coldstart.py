"""Cold-start check: how often do items added by text get recommended to the users who want
them?

Protocol (``evaluate_cold_start``): a run trained on a dataset made by
:func:`llmesr.data.holdout.hold_out_items` has never seen the held-out items. For every user
whose real test target is a held-out item, rank that target among *all* items (trained and
added) given the user's real history (held-out items in it are known once added), with ties
counted against the target and seen items left in, as in full-ranking evaluation. Before the
items are added the run cannot recommend them at all: HR@10 = 0.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmesr.data.artifact import load_dataset
from llmesr.data.holdout import load_held_out
from llmesr.errors import LlmesrError
from llmesr.serving.recommender import COLLABORATIVE, Recommender


def _metrics(ranks: np.ndarray, k: int) -> dict[str, float | None]:
    if len(ranks) == 0:          # an empty group (e.g. no tail-item case)
        return {f"HR@{k}": None, f"NDCG@{k}": None}
    hit = (ranks >= 0) & (ranks < k)
    ndcg = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return {f"HR@{k}": round(float(hit.mean()), 4), f"NDCG@{k}": round(float(ndcg.mean()), 4)}


def _warm_cases(data_dir: str | Path) -> tuple[list[list[str]], list[str]]:
    """The ordinary test cases of the (held-out) dataset: raw histories and targets."""
    ds = load_dataset(data_dir)
    users = ds.users
    rows = np.flatnonzero(users["evaluated"].to_numpy())
    raw = ds.item_table["raw_id"].astype(str).to_numpy()
    lengths = users["length"].to_numpy()
    hist = [raw[ds.sequence(int(u) + 1)[:lengths[u] - 1] - 1].tolist() for u in rows]
    return hist, raw[users["test_item"].to_numpy()[rows] - 1].tolist()


def _hit_rate(rec: Recommender, histories, targets, k: int, slots: int) -> float:
    hits = 0
    for lo in range(0, len(targets), 2048):
        out = rec.recommend_batch(histories[lo:lo + 2048], k, False, slots)
        hits += sum(t in r.ids for r, t in zip(out, targets[lo:lo + 2048]))
    return round(hits / len(targets), 4)


def evaluate_cold_start(run_dir: str | Path, held_out_data: str | Path, *,
                        methods: tuple[str, ...] = COLLABORATIVE, k: int = 10,
                        slots: tuple[int, ...] = (1, 2), device: str = "cpu"
                        ) -> dict[str, Any]:
    """Add the held-out items of ``held_out_data`` to ``run_dir`` (in memory only) with each
    collaborative-embedding method and report, on their test cases, HR / NDCG at k (and at
    50, 100), the targets' ranks among all items and among the added items only, and HR@k
    when ``new_item_slots`` of the k places are kept for added items, with what those slots
    cost on the ordinary (warm) test cases."""
    items, cases = load_held_out(held_out_data)
    if len(cases) == 0:
        raise LlmesrError(f"{held_out_data} has no held-out test cases")
    histories = [list(h) for h in cases["history"]]
    targets = cases["target"].astype(str).tolist()
    tail = dict(zip(items["raw_id"].astype(str), items["tail_item"].astype(bool)))
    tail_case = np.array([tail[t] for t in targets])
    base = Recommender.load(run_dir, device=device)
    fields = [c for c in items.columns if c in base.bundle.text_fields]
    new = [{"id": str(r["raw_id"]), **{c: _plain(r[c]) for c in fields}}
           for r in items.to_dict("records")]
    known = [t for t in targets if t in base]
    if known:
        raise LlmesrError(f"{run_dir} already knows held-out item {known[0]!r}: it was not "
                          f"trained on {held_out_data}")
    before = base.recommend_batch(histories, k, False)
    hits_before = sum(t in r.ids for r, t in zip(before, targets))
    out: dict[str, Any] = {
        "run": str(run_dir), "held_out_items": len(items), "tail_items": int(
            items["tail_item"].sum()), "test_cases": len(cases),
        "tail_item_cases": int(tail_case.sum()), "catalogue": base.num_items + len(items),
        "k": k, "before_adding": {f"HR@{k}": round(hits_before / len(cases), 4)},
        "random": {f"HR@{k}": round(k / (base.num_items + len(items)), 6)},
        "methods": {}}
    metrics_file = Path(run_dir) / "metrics.json"
    if metrics_file.is_file():      # the same run on its ordinary (warm) test cases
        import json

        full = json.loads(metrics_file.read_text()).get("test", {}).get("full", {})
        out["warm_test_full"] = {
            group: {m: round(full[group][m], 4) for m in (f"HR@{k}", f"NDCG@{k}")
                    if m in full[group]}
            for group in ("overall", "tail_item", "head_item") if group in full}
    warm_h, warm_t = _warm_cases(held_out_data) if slots else ([], [])
    if slots:
        out["warm_cases"] = len(warm_t)
        out["warm_HR@k_before_adding"] = _hit_rate(base, warm_h, warm_t, k, 0)
    for method in methods:
        rec = Recommender.load(run_dir, device=device)   # a fresh copy of the run per method
        t0 = time.perf_counter()
        rec.add_items(new, method, persist=False)
        add_seconds = time.perf_counter() - t0
        ranks = rec.ranks(histories, targets)
        # rank among the added items only: how well the text orders the new items
        rank_new = _rank_among_added(rec, histories, targets)
        added_ids = set(items["raw_id"].astype(str))
        top = rec.recommend_batch(histories, k, False)
        share = float(np.mean([sum(i in added_ids for i in r.ids) / k for r in top]))
        res = {**_metrics(ranks, k), **_metrics(ranks, 50), **_metrics(ranks, 100),
               "tail_items": _metrics(ranks[tail_case], k),
               "head_items": _metrics(ranks[~tail_case], k),
               "median_rank": int(np.median(ranks)) + 1,
               "median_rank_among_added": int(np.median(rank_new)) + 1,
               "added_share_of_top_k": round(share, 4),
               "add_seconds": round(add_seconds, 2)}
        for sl in slots:
            res[f"new_item_slots={sl}"] = {
                f"HR@{k}": _hit_rate(rec, histories, targets, k, sl),
                f"warm_HR@{k}": _hit_rate(rec, warm_h, warm_t, k, sl)}
        if slots:
            res[f"warm_HR@{k}"] = _hit_rate(rec, warm_h, warm_t, k, 0)
        out["methods"][method] = res
    return out


def _rank_among_added(rec: Recommender, histories, targets) -> np.ndarray:
    """0-based rank of each target among the added items only (pessimistic ties)."""
    first = rec.num_trained + 2
    out = []
    for lo in range(0, len(targets), 512):
        s = rec.score_matrix(histories[lo:lo + 512])[:, first:]
        t = torch.tensor([rec.model_id(x) - first for x in targets[lo:lo + 512]])
        own = s[torch.arange(len(t)), t]
        out.append(((s >= own[:, None]).sum(1) - 1).numpy())
    return np.concatenate(out)


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v
