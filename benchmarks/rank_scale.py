"""Full-catalogue ranking at scale: the score_fn path against the factored (blocked) path.

    python benchmarks/rank_scale.py [--users 20000] [--items 200000] [--hidden 64]
        [--history 20] [--topk 10] [--subset 2000] [--batch-size 1024] [--item-block B]
        [--threads N] [--device auto] [--out F]

Random user states (users x hidden) and item table ((items + 2) x hidden: padding row 0 and a
mask-token row that is never a candidate), ``--history`` random items excluded per user (the
seen items of a real evaluation). On the first ``--subset`` users both drivers run:
``full_ranking_ranks`` with ``score_fn = states[rows] @ items.T`` (one (batch, N + 1) score
block per batch) and ``full_ranking_ranks_factored`` (blocks of ``--item-block`` items); the
JSON says whether their ranks agree and how many differ (random float scores: a differing
rank can only come from a score that rounds differently in a block matmul than in one full
matmul, i.e. a near-tie of an ulp or two; the same goes for the order of two listed items).
The factored driver ranks every user first, and the peak RSS right after it is reported.

Each timing gives users/s and the seconds projected for 1M users x 200k items, scaling the
measured time per user by 200k / ``--items`` (the cost per user is linear in the catalogue).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, parse_with_runtime, peak_rss_mib  # noqa: E402

from llmesr.evaluation.protocols import (  # noqa: E402
    default_item_block,
    full_ranking_ranks,
    full_ranking_ranks_factored,
)

TARGET_USERS = 1_000_000
TARGET_ITEMS = 200_000


def _timing(seconds: float, users: int, items: int) -> dict:
    per_user = seconds / users
    return {"users": users, "seconds": round(seconds, 3),
            "users_per_s": round(users / seconds, 1),
            "projected_s_1M_users_200k_items": round(per_user * TARGET_USERS
                                                     * TARGET_ITEMS / items, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--history", type=int, default=20, help="excluded items per user")
    ap.add_argument("--topk", type=int, default=10,
                    help="length of the top-k lists also computed (0: ranks only); the "
                         "trainer's test evaluation asks for 10")
    ap.add_argument("--subset", type=int, default=2000,
                    help="users ranked by both drivers (0: skip the comparison)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--item-block", type=int, default=None,
                    help="items per block of the factored driver (default: its own)")
    ap.add_argument("--seed", type=int, default=0)
    args = parse_with_runtime(ap)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))

    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    n_users, n_items, hidden = args.users, args.items, args.hidden
    states = torch.randn(n_users, hidden, generator=gen).to(device)
    items = torch.randn(n_items + 2, hidden, generator=gen).to(device)
    targets = rng.integers(1, n_items + 1, n_users)
    history = rng.integers(1, n_items + 1, (n_users, args.history))
    exclude = list(history)                   # one row view per user, as the trainer passes
    users = np.arange(n_users)
    block = args.item_block or default_item_block(args.batch_size, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def score_fn(rows: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
        return states[rows.to(device)] @ items.T

    def states_fn(rows: torch.Tensor) -> torch.Tensor:
        return states[rows.to(device)]

    def factored(m: int):
        return full_ranking_ranks_factored(states_fn, items, users[:m], targets[:m], n_items,
                                           batch_size=args.batch_size, item_block=block,
                                           exclude=exclude[:m], progress=False,
                                           topk=args.topk)

    def timed(fn, *a):
        sync()
        t0 = time.perf_counter()
        out = fn(*a)
        sync()
        return out, time.perf_counter() - t0

    result: dict = {"benchmark": "rank_scale", "device": str(device),
                    "threads": torch.get_num_threads(), "users": n_users, "items": n_items,
                    "hidden": hidden, "history": args.history, "topk": args.topk,
                    "batch_size": args.batch_size, "item_block": block}
    with torch.no_grad():
        # the factored driver on everyone first, so that the peak memory after it is its own
        # (the score_fn driver's (batch, N + 1) blocks come later)
        _, t_full = timed(factored, n_users)
        result["full"] = {"factored": _timing(t_full, n_users, n_items),
                          "peak_rss_mib_after": peak_rss_mib()}
        m = min(args.subset, n_users)
        if m:
            old, t_old = timed(lambda: full_ranking_ranks(
                score_fn, users[:m], targets[:m], n_items, batch_size=args.batch_size,
                exclude=exclude[:m], progress=False, topk=args.topk))
            new, t_new = timed(factored, m)
            r_old, r_new = (old[0], new[0]) if args.topk else (old, new)
            cmp = {"ranks_equal": bool(np.array_equal(r_old, r_new)),
                   "rank_mismatches": int((r_old != r_new).sum())}
            if args.topk:
                # lists can differ where two listed items' scores are a few ulp apart and the
                # block matmul rounds them in the other order than the whole-row matmul
                cmp["topk_equal"] = bool(np.array_equal(old[1], new[1]))
                cmp["topk_rows_differing"] = int((old[1] != new[1]).any(axis=1).sum())
            result["subset"] = {"score_fn": _timing(t_old, m, n_items),
                                "factored": _timing(t_new, m, n_items),
                                "speedup": round(t_old / t_new, 2), **cmp}
    emit(result, args.out)


if __name__ == "__main__":
    main()
