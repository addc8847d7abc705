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

from llmesr.data.holdout import load_held_out
from llmesr.errors import LlmesrError
from llmesr.serving.recommender import COLLABORATIVE, Recommender


def _metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    hit = (ranks >= 0) & (ranks < k)
    ndcg = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return {f"HR@{k}": round(float(hit.mean()), 4), f"NDCG@{k}": round(float(ndcg.mean()), 4)}


def evaluate_cold_start(run_dir: str | Path, held_out_data: str | Path, *,
                        methods: tuple[str, ...] = COLLABORATIVE, k: int = 10,
                        device: str = "cpu") -> dict[str, Any]:
    """Add the held-out items of ``held_out_data`` to ``run_dir`` (in memory only) with each
    collaborative-embedding method and report HR@k / NDCG@k on their test cases."""
    items, cases = load_held_out(held_out_data)
    if len(cases) == 0:
        raise LlmesrError(f"{held_out_data} has no held-out test cases")
    histories = [list(h) for h in cases["history"]]
    targets = cases["target"].astype(str).tolist()
    tail = dict(zip(items["raw_id"].astype(str), items["tail_item"].astype(bool)))
    tail_case = np.array([tail[t] for t in targets])
    fields = [c for c in items.columns if c not in ("item_id", "raw_id", "popularity",
                                                    "tail_item")]
    new = [{"id": str(r["raw_id"]), **{c: _plain(r[c]) for c in fields}}
           for r in items.to_dict("records")]

    base = Recommender.load(run_dir, device=device)
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
    for method in methods:
        rec = Recommender.load(run_dir, device=device)   # a fresh copy of the run per method
        t0 = time.perf_counter()
        rec.add_items(new, method, persist=False)
        add_seconds = time.perf_counter() - t0
        ranks = rec.ranks(histories, targets)
        added_ids = set(items["raw_id"].astype(str))
        top = rec.recommend_batch(histories, k, False)
        share = float(np.mean([sum(i in added_ids for i in r.ids) / k for r in top]))
        out["methods"][method] = {
            **_metrics(ranks, k),
            "tail_items": _metrics(ranks[tail_case], k),
            "head_items": _metrics(ranks[~tail_case], k),
            "median_rank": int(np.median(ranks)) + 1,
            "added_share_of_top_k": round(share, 4),
            "add_seconds": round(add_seconds, 2)}
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v
